"""`edgepay registry master-keygen|reseal`: device keys at rest, sealed under a master key
(host_tools/cloud/keyvault.py). Every cloud part reads the master key from the file named by
EDGEPAY_MASTER_KEY_FILE; keep that file owner-only and outside the repository and the database.

    edgepay registry master-keygen --out /etc/edgepay/master.key
    edgepay registry reseal --new-master-key-file /etc/edgepay/master.key      # seal a plain registry
    EDGEPAY_MASTER_KEY_FILE=old.key edgepay registry reseal --new-master-key-file new.key   # rotate
"""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.cli.common import Ctx, fail


def register(cli: click.Group) -> None:
    @cli.group()
    def registry() -> None:
        """The device registry's keys at rest: a master key, sealing and rotating."""

    @registry.command("master-keygen")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="the new master key file (0600; refused if it exists)")
    @click.pass_obj
    def master_keygen(o: Ctx, out: Path) -> None:
        """Make a 32-byte master key (hex in an owner-only file)."""
        from host_tools.cli.common import make_private_dir
        from host_tools.cloud.keyvault import write_master_key
        from host_tools.release import inside_git_tree
        repo = inside_git_tree(out.parent if out.parent.exists() else out.parent.parent)
        if repo is not None:
            fail(f"{out} is inside the git work tree {repo}: a master key never goes into a repository")
        make_private_dir(out.parent)
        try:
            write_master_key(out)
        except FileExistsError:
            fail(f"{out} exists: a master key is never overwritten (the registry may be sealed under it)")
        o.emit({"master_key_file": str(out)}, lambda: o.console.print(f"[bold green]master key[/] {out} (0600)"))

    @registry.command()
    @click.option("--new-master-key-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
    @click.pass_obj
    def reseal(o: Ctx, new_master_key_file: Path) -> None:
        """Seal every device key under the new master key: from plain keys, or from the master key
        EDGEPAY_MASTER_KEY_FILE names now (a rotation). One transaction: all or nothing."""
        from host_tools.cloud.keyvault import KeyVault, VaultError, read_master_key
        from host_tools.cloud.registry import RegistryError
        try:
            new = KeyVault(read_master_key(new_master_key_file))
        except VaultError as e:
            fail(str(e))
        try:
            reg = o.open_registry()
        except VaultError as e:
            fail(str(e))
        try:
            n = reg.reseal(new)
        except RegistryError as e:
            fail(str(e))
        finally:
            reg.close()
        o.emit({"resealed": n, "master_key_file": str(new_master_key_file)}, lambda: o.console.print(
            f"[bold green]resealed[/] {n} device key(s) under {new_master_key_file}; set "
            f"EDGEPAY_MASTER_KEY_FILE={new_master_key_file} for every cloud part"))
