"""A local Azure: Entra, Graph, ARM, Key Vault, IMDS and live VMs, reached by unchanged clients
through a forward proxy with Azure's real hostnames. Imports nothing from the plugin.
"""

from .audit import AuditEntry, AuditLog
from .localazure import Identity, LocalAzure, UserIdentity

__all__ = ["AuditEntry", "AuditLog", "Identity", "LocalAzure", "UserIdentity"]
