"""edgepay host-side (cloud) tools."""
