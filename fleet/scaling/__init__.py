"""The autoscaler (issue 15 part 4): per segment, decide from the load, log, act if enforcing.

A *segment* is one manifest group: the agents sharing an ``id_prefix``
(``{id_prefix}-{index:04d}-{8 hex}``). :mod:`fleet.scaling.decide` is the pure decision,
:mod:`fleet.scaling.autoscaler` gathers its inputs, keeps the cooldown and the log,
and acts; :mod:`fleet.scaling.enforce` is the approval-gated switch to enforce mode.
"""
