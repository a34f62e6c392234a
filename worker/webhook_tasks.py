"""Webhook delivery tasks (owned by the hospital-integration work).

The pipeline sends `neuroscan.deliver_webhook` with args `[scan_id_or_batch_id, kind]`
(kind: "scan" or "batch") when a scan or a whole batch with a callback URL reaches a final
state. The task itself is defined here by its owner.
"""
