"""Onward notifications (Standard Webhooks): every status change of a message, signed and
delivered to the user's own endpoints, retried until it lands, in order per message.

- ``models``: the endpoints and the outbox of deliveries;
- ``outbox``: the notification written in the transaction of the change (every path);
- ``urls``: which URLs and addresses may be called (SSRF);
- ``delivery``: one signed HTTP attempt, to the address that was checked;
- ``worker``: claim due deliveries, attempt them, record the outcome, retry on the schedule;
- ``api`` and ``pages``: the ``/api/webhooks`` routes and the dashboard's Webhooks page.
"""
