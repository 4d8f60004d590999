"""Promotion by hand: `champion` moved to a chosen model version by a person, with who, when and why recorded
as tags of that version before the alias moves, so that no alias moves without its record."""

from datetime import datetime, timezone

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from selection.config import CHALLENGER, CHAMPION
from selection.records import RecordError


def promote_version(tracking_uri: str, model_name: str, version: int | str, who: str, why: str) -> str:
    """Make `version` of `model_name` the champion; returns what happened, in words. The version is tagged
    `promoted_by`, `promoted_at` (UTC, ISO 8601), `promoted_why` and `promoted_from` (the champion it replaces,
    or "none"); a `challenger` alias on that version is removed, since it is now the champion."""
    who, why = who.strip(), why.strip()
    if not who or not why:
        raise ValueError("say who promotes and why: both are recorded on the version")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = str(version)
    try:
        aliases = client.get_registered_model(model_name).aliases
        client.get_model_version(model_name, version)
        previous = aliases.get(CHAMPION)
        if str(previous) == version:
            return f"{model_name} v{version} already is the champion: nothing moved"
        tags = {"promoted_by": who, "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "promoted_why": why, "promoted_from": f"v{previous}" if previous else "none"}
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        if str(aliases.get(CHALLENGER)) == version:
            client.delete_registered_model_alias(model_name, CHALLENGER)
    except (MlflowException, OSError) as error:
        raise RecordError(f"could not promote {model_name} v{version}: {str(error).splitlines()[0][:200]}") from error
    return (f"{model_name} v{version} is now the champion"
            + (f" (was v{previous})" if previous else "") + f", promoted by {who}: {why}")
