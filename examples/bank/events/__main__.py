"""`python -m examples.bank.events ...` runs the events service (see service.py)."""

from examples.bank.events.service import main

if __name__ == "__main__":
    main()
