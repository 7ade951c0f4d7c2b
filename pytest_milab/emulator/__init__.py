"""A local Azure: Entra, Graph, ARM, Key Vault, IMDS, live VMs and on-premises machines for Azure
Arc, reached by unchanged clients through a forward proxy with Azure's real hostnames. Imports
nothing from the plugin.
"""

from .audit import AuditEntry, AuditLog
from .localazure import Identity, LocalAzure, Machine, UserIdentity

__all__ = ["AuditEntry", "AuditLog", "Identity", "LocalAzure", "Machine", "UserIdentity"]
