"""SLA enforcement: contracts from templates, compliance samples, violation episodes, error budgets.

Plain Python with no Celery import. tasks/sla.py runs it on the ``sla`` queue;
the escalation of open episodes lives in :mod:`fleet.escalation`.
"""
