"""The whole beat schedule, built from settings: the one place periodic work is declared.

Each periodic entry starts a dispatcher that fans out; its message expires
within one interval so a backlog never piles sweeps on top of each other.
Daily and monthly work runs on a crontab: an interval would restart its count
every time beat restarts, and a beat restarted daily would never run it.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from config.settings import Settings
from workers.queues import ALL_QUEUES, TaskName, heartbeat_name

DAY_S = 86400.0


def _entry(task: str, every_s: float, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": every_s,
        "kwargs": kwargs or {},
        "options": {"expires": every_s * 0.9},
    }


def _daily(task: str, *, hour: int, minute: int) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": crontab(minute=minute, hour=hour),
        "kwargs": {},
        "options": {"expires": DAY_S * 0.9},
    }


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    s = settings.schedule
    audit, approvals = settings.policy.audit, settings.policy.approvals
    schedule: dict[str, dict[str, Any]] = {}
    # A canary per queue: proves end to end that each queue has a live
    # consumer, and gives `fleet status` its queue round-trip time.
    for queue in ALL_QUEUES:
        schedule[f"heartbeat-{queue.value}"] = _entry(heartbeat_name(queue), s.heartbeat_s)
    # Agents whose provisioning stopped moving (a worker died mid-step) are
    # picked up again; the lock and step records make a duplicate harmless.
    schedule["provisioning-resume-stalled"] = _entry(
        TaskName.RESUME_STALLED, s.provisioning_resume_s, kwargs={"stall_s": s.provisioning_stall_s}
    )
    # Hourly is plenty for a 90-day rotation; each due agent gets its own task.
    schedule["provisioning-rotate-keys"] = _entry(TaskName.ROTATE_DUE_KEYS, s.key_rotation_check_s)
    # Every agent polled once a minute (operations §2). The message expires
    # within the interval, the sweep takes a per-tick dedup key and a
    # no-overlap lock, and its batches expire before the next tick: a slow
    # sweep is skipped, never stacked, and a second beat doubles nothing.
    schedule["metrics-sweep"] = _entry(TaskName.METRICS_SWEEP, s.metrics_sweep_s)
    # The kill switch's flags in Redis re-asserted from the database (a restarted Redis
    # must not un-pause the control loop).
    schedule["control-sync"] = _entry(TaskName.CONTROL_SYNC, settings.policy.control.sync_s)
    # Silent agents (no heartbeat for a policy multiple of its interval) turn unknown,
    # then critical, and the fleet view is folded from the snapshots: as often as the
    # sweep, so a dead agent shows within one interval of crossing its limit.
    schedule["metrics-silence"] = _entry(TaskName.SILENCE_PASS, s.metrics_sweep_s)
    # Behavioural signals judge hour-long windows of task logs: five minutes is plenty.
    schedule["metrics-behaviour"] = _entry(TaskName.CHECK_BEHAVIOUR, s.behaviour_check_s)
    # Daily is enough for a 90-day retention of hourly history; at night, UTC.
    schedule["metrics-retention"] = _daily(TaskName.ENFORCE_RETENTION, hour=3, minute=15)
    # The SLA's own rhythm (5 min by default): one dispatcher message fans the
    # fleet out in batches, each expiring within the interval.
    schedule["sla-sweep"] = _entry(TaskName.SLA_SWEEP, s.sla_check_s)
    # Tiers come due by an episode's age, not only when a check lands: a
    # one-minute tick starts each tier within a minute of its threshold.
    schedule["sla-escalation-tick"] = _entry(TaskName.SLA_ESCALATION_TICK, s.escalation_tick_s)
    # The fastest burn alert's short window is 5 min: evaluate about every minute.
    schedule["sla-burn-alerts"] = _entry(TaskName.SLA_BURN_ALERTS, s.burn_alert_s)
    # Signs the head when fewer than checkpoint_every entries came since the last checkpoint.
    # Work task records: written in batches, off the routing hot path.
    schedule["routing-flush-records"] = _entry(TaskName.FLUSH_WORK_RECORDS, 2.0)
    schedule["audit-checkpoint"] = _entry(TaskName.AUDIT_CHECKPOINT, audit.checkpoint_interval_s)
    # Daily is enough for a retention counted in months.
    schedule["audit-retention"] = _daily(TaskName.AUDIT_RETENTION, hour=3, minute=45)
    # Expiry must be prompt: a request past its time is denied within a sweep.
    schedule["audit-approvals-sweep"] = _entry(TaskName.AUDIT_APPROVALS_SWEEP, approvals.sweep_s)
    # The 1st of the month, for the month just ended.
    schedule["audit-compliance-monthly"] = {
        "task": TaskName.AUDIT_COMPLIANCE_REPORT,
        "schedule": crontab(minute=30, hour=0, day_of_month=1),
        "kwargs": {},
        "options": {"expires": DAY_S},
    }
    # Monday (policy finops.review_cron_*): every fleet's FinOps review of the week before.
    finops = settings.policy.finops
    schedule["audit-finops-weekly"] = {
        "task": TaskName.AUDIT_FINOPS_REVIEW,
        "schedule": crontab(
            minute=finops.review_cron_minute,
            hour=finops.review_cron_hour,
            day_of_week=finops.review_cron_day_of_week,
        ),
        "kwargs": {},
        "options": {"expires": DAY_S},
    }
    # Budgets: reservations whose task vanished released, pauses and raised limits
    # re-asserted in Redis; the spend ledger's queued rows written in batches.
    schedule["budgets-sweep"] = _entry(TaskName.BUDGET_SWEEP, settings.budgets.sweep_s)
    schedule["budgets-ledger"] = _entry(
        TaskName.BUDGET_DRAIN_LEDGER, settings.budgets.ledger_drain_s
    )
    # The autoscaler decides per segment on its own cadence; its pass and its actions
    # (provision, retire) run on the provisioning queue, beside the work they start.
    schedule["provisioning-autoscale"] = _entry(
        TaskName.SCALING_EVALUATE, settings.policy.scaling.evaluate_every_s
    )
    if audit.mirror_enabled:
        # Appends nudge the outbox; this resumes it after a gateway outage.
        schedule["audit-mirror"] = _entry(TaskName.AUDIT_MIRROR, audit.mirror_every_s)
    return schedule
