"""Exceptions the SDK raises. It raises only at configuration time, never while recording."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigurationError"]


class ConfigurationError(ValueError):
    """A setting given to :func:`bakhmach_obs.configure` (or its environment variable) is invalid.

    The message names the setting, the environment variable it can come from, the rejected value
    and what is accepted.

    Example:
        >>> import bakhmach_obs
        >>> try:
        ...     bakhmach_obs.configure(service_name="svc", traces_sampler_arg=2)
        ... except bakhmach_obs.ConfigurationError as exc:
        ...     print(exc.setting)
        traces_sampler_arg
    """

    def __init__(
        self,
        setting: str,
        value: object,
        accepted: str | Iterable[str],
        *,
        env: str | None = None,
    ) -> None:
        if not isinstance(accepted, str):
            accepted = ", ".join(repr(a) for a in accepted)
        source = f" (environment variable {env})" if env else ""
        super().__init__(f"invalid {setting}{source}: {value!r}; accepted: {accepted}")
        self.setting = setting
        self.value = value
        self.accepted = accepted
        self.env = env
