"""Registry errors; the REST layer maps each to a status code."""


class RegistryError(Exception):
    """Base of the registry's own errors."""


class NotFoundError(RegistryError):
    """No row with that id or name."""


class DuplicateError(RegistryError):
    """A unique name is already taken."""


class InvalidSpecError(RegistryError):
    """The merged server definition does not validate."""
