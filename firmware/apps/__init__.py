# Payment apps on top of the agent (gate, vending, rental) and their fee rules (fees.py).
