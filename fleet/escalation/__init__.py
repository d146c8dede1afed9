"""Escalation of SLA violation episodes: the engine (what is due) and the four tiers' actions.

Plain Python: tasks/escalation.py runs the actions on the tier queues and
tasks/sla.py runs the engine; tests call both directly with a ManualClock.
"""
