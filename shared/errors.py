"""One exception tree for the platform.

Every error says what it is about (the IDs travel as attributes, not only in the text), and
carries the HTTP status the gateway maps it to.  Nothing here imports a web framework.
"""

from __future__ import annotations

from typing import Any


class VR1Error(Exception):
    """Root of every error the platform raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, **ids: Any) -> None:
        super().__init__(message)
        self.message = message
        self.ids = ids

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON body the API returns (IDs as text: UUIDs, paths)."""
        plain = (str, int, float, bool, list, dict, type(None))
        ids = {k: v if isinstance(v, plain) else str(v) for k, v in self.ids.items()}
        return {"error": self.code, "message": self.message, **ids}


class NotFound(VR1Error):
    status_code = 404
    code = "not_found"


class JobNotFound(NotFound):
    def __init__(self, job_id: Any) -> None:
        super().__init__(f"job {job_id} not found", job_id=str(job_id))


class DatasetNotFound(NotFound):
    def __init__(self, dataset_id: Any) -> None:
        super().__init__(f"dataset {dataset_id} not found", dataset_id=str(dataset_id))


class ItemNotFound(NotFound):
    def __init__(self, item_id: Any) -> None:
        super().__init__(f"item {item_id} not found", item_id=str(item_id))


class TeamNotFound(NotFound):
    def __init__(self, team: Any) -> None:
        super().__init__(f"team {team} not found", team=str(team))


class ArtifactNotFound(NotFound):
    """An artifact the caller cannot see, or (``uri``) whose stored bytes are gone."""

    def __init__(self, artifact_id: Any = None, *, uri: str | None = None) -> None:
        what = artifact_id if artifact_id is not None else uri
        ids = {"artifact_id": str(artifact_id)} if artifact_id is not None else {}
        super().__init__(f"artifact {what} not found", **ids, **({"uri": uri} if uri else {}))


class Unauthorized(VR1Error):
    status_code = 401
    code = "unauthorized"


class Conflict(VR1Error):
    status_code = 409
    code = "conflict"


class InvalidInput(VR1Error):
    """A request or a file that cannot be accepted as it is."""

    status_code = 422
    code = "invalid_input"


class WrongJobKind(InvalidInput):
    """A job handed to code for another kind of job (a misrouted message, say)."""

    code = "wrong_job_kind"

    def __init__(self, job_id: Any, *, expected: str, actual: str) -> None:
        message = f"job {job_id} is a {actual} job; expected {expected}"
        super().__init__(message, job_id=str(job_id), kind=actual)


class DatasetInvalid(InvalidInput):
    """A dataset file with rows that fail validation; ``errors`` lists row and reason."""

    code = "dataset_invalid"

    def __init__(self, message: str, errors: list[dict[str, Any]], **ids: Any) -> None:
        super().__init__(message, **ids)
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": self.errors}


class PayloadTooLarge(VR1Error):
    status_code = 413
    code = "payload_too_large"


class StorageError(VR1Error):
    code = "storage_error"


class UnsafePath(InvalidInput):
    """A path that would leave the folder it must stay in."""

    code = "unsafe_path"


class EngineError(VR1Error):
    """A model call failed; ``retryable`` says whether trying again may help."""

    status_code = 502
    code = "engine_error"

    def __init__(self, message: str, *, retryable: bool = False, **ids: Any) -> None:
        super().__init__(message, **ids)
        self.retryable = retryable


class ItemFailed(VR1Error):
    """One item of a job cannot be processed; the job goes on without it."""

    code = "item_failed"

    def __init__(self, reason: str, *, item_id: Any = None, job_id: Any = None) -> None:
        super().__init__(reason, item_id=str(item_id), job_id=str(job_id))
        self.reason = reason


class NotAvailable(VR1Error):
    """A feature that this installation or this release does not provide."""

    status_code = 501
    code = "not_available"


class UnknownReward(InvalidInput):
    """A reward name that is not registered."""

    code = "unknown_reward"

    def __init__(self, reward: str, *, known: list[str]) -> None:
        super().__init__(f"unknown reward {reward!r}; known: {', '.join(known)}", reward=reward)


class BatchTooLarge(PayloadTooLarge):
    """A scoring batch with more items than the service accepts."""

    code = "batch_too_large"

    def __init__(self, items: int, limit: int) -> None:
        super().__init__(f"{items} items in one batch; the limit is {limit}", limit=limit)


class CompletionTooLong(PayloadTooLarge):
    """A completion longer than the service accepts; ``index`` is its place in the batch."""

    code = "completion_too_long"

    def __init__(self, index: int, chars: int, limit: int) -> None:
        message = f"item {index}: completion of {chars} characters; the limit is {limit}"
        super().__init__(message, index=index, limit=limit)


class RewardServiceError(VR1Error):
    """The reward service could not be reached or answered with an error."""

    status_code = 502
    code = "reward_service_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.status = status


class EngineRequestFailed(EngineError):
    """One request to a model engine failed; ``kind`` is a short machine-readable reason."""

    code = "engine_request_failed"

    def __init__(self, message: str, *, kind: str, retryable: bool = False, **ids: Any) -> None:
        super().__init__(message, retryable=retryable, kind=kind, **ids)
        self.kind = kind


class ImageRejected(EngineRequestFailed):
    """An input image that cannot be used: ``image_unreadable`` or ``image_too_large``."""

    status_code = 422
    code = "image_rejected"

    def __init__(self, message: str, *, kind: str, image: str) -> None:
        super().__init__(message, kind=kind, image=image)
