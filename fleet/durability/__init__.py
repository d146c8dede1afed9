"""What must survive a restart of Redis, a worker or the whole stack.

- :mod:`fleet.durability.control`: control state (the provisioning freeze) kept in
  the database, so a Redis restart never lifts it.
- :mod:`fleet.durability.deadletters`: deliveries counted per task id; a message
  delivered ``max_deliveries`` times without finishing is stored as a dead letter
  instead of being run again, and can be replayed or dropped by an operator.
"""
