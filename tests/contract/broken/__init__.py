"""Deliberately broken modifiers, one per way of breaking the contract.

Each module subclasses :class:`tests.contract.shrink.Shrink` (which passes the
contract) and breaks one thing; ``tests/contract/test_broken_modifiers.py``
checks that the contract catches each, and shows the counterexample.
"""
