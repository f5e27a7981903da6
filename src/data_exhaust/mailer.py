"""E-mailing a finished task's download link (``EXHAUST_SMTP_URL=smtp://host:port``).

Plain SMTP through the standard library (``smtp://user:password@host:port`` logs in after
STARTTLS when the server offers it). What happened is returned for the task object: a link
is never e-mailed silently nor lost silently.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

SENDER = "data-exhaust@localhost"
TIMEOUT = 10.0


def send_link(smtp_url: str | None, to: str, subject: str, link: str) -> dict[str, Any]:
    """Send ``link`` to ``to``; ``{"to", "sent", "reason"}`` for the task object."""
    if not smtp_url:
        return {"to": to, "sent": False, "reason": "EXHAUST_SMTP_URL is not set; not e-mailed"}
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, to, subject
    message.set_content(f"Your export is ready. Download it here:\n\n{link}\n")
    try:
        _deliver(smtp_url, message)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return {"to": to, "sent": False, "reason": f"SMTP failed: {type(exc).__name__}"}
    return {"to": to, "sent": True, "reason": None}


def _deliver(smtp_url: str, message: EmailMessage) -> None:
    url = urlsplit(smtp_url)
    if url.scheme != "smtp" or not url.hostname:
        raise ValueError("EXHAUST_SMTP_URL must look like smtp://host:port")
    with smtplib.SMTP(url.hostname, url.port or 25, timeout=TIMEOUT) as smtp:
        if url.username:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls()
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(message)
