"""Events: every push and delete, kept as small objects in storage, followed live over SSH
(`ssh reg.host events`, `wait`) and delivered to webhooks, the same on every gateway.

`log.py` writes and reads the log and follows it; `webhooks.py` delivers it; `settings.py`
declares `[events]` and `[[webhook]]`.
"""
