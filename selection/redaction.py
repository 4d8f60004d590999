"""Passwords in store URIs (MLflow tracking, Optuna storage) never reach messages, tags, logs or pages."""

from urllib.parse import urlsplit, urlunsplit


def without_password(uri: str) -> str:
    """`uri` with any password replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def hide_password(text: str, uri: str) -> str:
    """`text` (an error message, say) with the password of `uri`, wherever it appears, replaced by ***."""
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text
