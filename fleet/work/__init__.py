"""The work plane: tasks in, model routing, agent selection, delivery over A2A, settlement.

Plain Python, no Celery: ``tasks/routing.py`` wraps :func:`fleet.work.service.run_task`
and the API (``web/routes/tasks.py``) validates and enqueues.
"""
