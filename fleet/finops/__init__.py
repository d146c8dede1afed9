"""FinOps (issue 15): cost attribution for task trees, the weekly review, fleet economics.

Plain domain logic: money is Decimal, a cost not known yet is :data:`UNKNOWN` (never 0).
"""
