"""The grader's view of Azure: one credential, SDK clients per subscription, retries that honour
`Retry-After` within a deadline. Read-only by construction in discover mode: nothing here writes."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cached_property

from ..errors import AzureError, CredentialError

ARM_SCOPE = "https://management.azure.com/.default"


def make_credential():
    """azure-identity's chain: environment, workload identity, managed identity (a grader VM's
    own), Azure CLI, ... — whatever the grader is signed in with."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def check_credential(credential) -> None:
    """Fail early, in one line, when no credential works."""
    from azure.core.exceptions import ClientAuthenticationError

    try:
        credential.get_token(ARM_SCOPE)
    except ClientAuthenticationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CredentialError(
            "no Azure credentials: sign in with `az login`, or set AZURE_TENANT_ID, "
            f"AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or run on a VM with a managed identity "
            f"({first})") from None


def _client_kwargs(timeout: float, transport=None) -> dict:
    # azure-core's RetryPolicy retries 408/429/5xx and honours Retry-After; bound it in time.
    kwargs = {"retry_total": 6, "retry_backoff_factor": 0.5, "retry_backoff_max": 20,
              "timeout": timeout, "connection_timeout": min(timeout, 20), "read_timeout": timeout}
    if transport is not None:
        kwargs["transport"] = transport
    return kwargs


def shared_transport(pool_size: int):
    """One HTTP connection pool for all clients, sized for the labs gathered at once."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=max(10, pool_size))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=False)


def default_subscription(credential, timeout: float = 60.0) -> str:
    """The credential's only subscription, or a one-line error naming what to pass."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.subscription import SubscriptionClient

    try:
        subs = [s.subscription_id for s in
                SubscriptionClient(credential, **_client_kwargs(timeout)).subscriptions.list()]
    except HttpResponseError as exc:
        raise AzureError(f"could not list subscriptions: {exc.message}") from None
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise CredentialError("the Azure credential sees no subscription: give it Reader on the "
                              "labs' subscriptions, or pass --milab-subscription")
    raise CredentialError(f"the Azure credential sees {len(subs)} subscriptions: pass "
                          "--milab-subscription or a roster `subscription` column")


class SubscriptionClients:
    """Lazily built azure-mgmt-* clients for one subscription, shared by threads."""

    def __init__(self, credential, subscription_id: str, timeout: float = 60.0,
                 transport=None) -> None:
        self.credential = credential
        self.subscription_id = subscription_id
        self._kwargs = _client_kwargs(timeout, transport)

    @cached_property
    def resource(self):
        try:  # azure-mgmt-resource 24+ moved it into a subpackage
            from azure.mgmt.resource.resources import ResourceManagementClient
        except ImportError:
            from azure.mgmt.resource import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def keyvault(self):
        from azure.mgmt.keyvault import KeyVaultManagementClient

        return KeyVaultManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def compute(self):
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def network(self):
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def authorization(self):
        from azure.mgmt.authorization import AuthorizationManagementClient

        return AuthorizationManagementClient(self.credential, self.subscription_id,
                                             **self._kwargs)


class ClientPool:
    """One `SubscriptionClients` per subscription for the whole session."""

    def __init__(self, credential, timeout: float = 60.0, pool_size: int = 16) -> None:
        self.credential = credential
        self.timeout = timeout
        self._transport = shared_transport(pool_size)
        self._clients: dict[str, SubscriptionClients] = {}
        self._lock = threading.Lock()

    def for_subscription(self, subscription_id: str) -> SubscriptionClients:
        with self._lock:
            key = subscription_id.lower()
            if key not in self._clients:
                self._clients[key] = SubscriptionClients(self.credential, subscription_id,
                                                         self.timeout, self._transport)
            return self._clients[key]


def to_json(model) -> dict:
    """An SDK model as the REST JSON ARM returned (camelCase, nested `properties`)."""
    if model is None:
        return None
    if isinstance(model, Mapping):
        return model.as_dict() if hasattr(model, "as_dict") else dict(model)
    return model.serialize(keep_readonly=True)
