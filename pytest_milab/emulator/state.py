"""The in-memory model of one tenant: directory objects, subscriptions, resources, role
assignments and vault contents. Services read and change it under `cloud.lock`.

Changes that Azure applies eventually (role assignments, vault access policies) are stored with
the time they take effect, `now + propagation_delay`; readers ask for what is in force *now*.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog
from .knobs import Knobs


def new_guid() -> str:
    return str(uuid.uuid4())


def arm_key(resource_id: str) -> str:
    """ARM ids are case-insensitive: one canonical key per id."""
    return resource_id.rstrip("/").lower()


@dataclass
class Application:
    """A Graph application object; its secrets are what client credentials are checked against."""

    object_id: str
    app_id: str
    display_name: str
    created: float
    passwords: list[dict] = field(default_factory=list)  # {keyId, displayName, secretText, hint, ...}
    tags: list[str] = field(default_factory=list)
    # What Graph gives an application created with only a display name (entra/graph.py).
    sign_in_audience: str = "AzureADandPersonalMicrosoftAccount"
    requested_access_token_version: int | None = 2
    identifier_uris: list[str] = field(default_factory=list)  # app ID URIs (api://...)


@dataclass
class ServicePrincipal:
    object_id: str
    app_id: str
    display_name: str
    kind: str = "Application"  # Application | ManagedIdentity
    mi_resource_id: str | None = None  # the compute resource (system) or identity (user-assigned)
    created: float = 0.0
    graph_write: bool = False  # may create and delete applications in Graph
    tags: list[str] = field(default_factory=list)


@dataclass
class User:
    """An Entra user account: signs in with its UPN and password (entra/users.py)."""

    object_id: str
    user_principal_name: str
    display_name: str
    password: str
    created: float = 0.0
    given_name: str | None = None
    surname: str | None = None


@dataclass
class RoleAssignment:
    id: str
    name: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str
    created_by: str | None
    created_on: float
    effective_at: float
    removed_at: float | None = None
    description: str | None = None
    condition: str | None = None
    condition_version: str | None = None

    def in_force(self, now: float) -> bool:
        if self.effective_at > now:
            return False
        return self.removed_at is None or self.removed_at > now


@dataclass
class Timed:
    """A value that changes eventually: `history` holds (effective_at, value) in time order."""

    history: list[tuple[float, Any]] = field(default_factory=list)

    def set(self, value: Any, effective_at: float) -> None:
        self.history.append((effective_at, value))

    def at(self, now: float, default: Any = None) -> Any:
        current = default
        for when, value in self.history:
            if when <= now:
                current = value
            else:
                break
        return current


@dataclass
class Subscription:
    subscription_id: str
    display_name: str
    state: str = "Enabled"


class Cloud:
    """Everything the local Azure knows. Mutate only while holding `lock`."""

    def __init__(self, *, tenant_id: str | None = None, clock=time.time,
                 knobs: Knobs | None = None) -> None:
        self.tenant_id = tenant_id or new_guid()
        self.clock = clock
        self.knobs = knobs or Knobs()
        self.lock = threading.RLock()
        self.audit = AuditLog()
        self.subscriptions: dict[str, Subscription] = {}
        self.applications: dict[str, Application] = {}  # by object id
        self.service_principals: dict[str, ServicePrincipal] = {}  # by object id
        self.users: dict[str, User] = {}  # by object id (lower)
        self.resource_groups: dict[str, dict] = {}  # arm_key(id) -> ARM JSON
        self.resources: dict[str, dict] = {}  # arm_key(id) -> ARM JSON (generic resources)
        self.role_assignments: dict[str, RoleAssignment] = {}  # arm_key(id) -> assignment
        self._by_principal: dict[str, list[RoleAssignment]] | None = None  # assignments_of
        self.deleted_vaults: dict[str, dict] = {}  # vault name (lower) -> deletedVault JSON
        self.deleted_vault_bodies: dict[str, dict] = {}  # vault name (lower) -> vault JSON (recover)
        self.vault_data: dict[str, Any] = {}  # vault name (lower) -> data-plane store (keyvault.py)
        # vault name (lower) -> the arm_key it was last found at (keyvault.find_vault checks it)
        self.vault_keys: dict[str, str] = {}
        self.access_policies: dict[str, Timed] = {}  # vault name (lower) -> Timed(list of policies)
        self.vm_power: dict[str, str] = {}  # arm_key(vm id) -> running | stopped | deallocated
        self.next_public_ip = 0  # public IPs are loopback addresses 127.10.x.y, see allocate_ip
        # Set by the live VMs: whether an address is already served by another process (a second
        # local Azure on this machine, e.g. under pytest-xdist), so allocate_ip skips it.
        self.address_taken = None
        # Callables(event, resource) told of lifecycle changes: "vm.changed", "vm.deleted",
        # "network.changed" (an NSG, NIC or public IP changed), "machine.deleted" (an Arc
        # machine's resource).
        self.listeners: list = []
        # Set by the on-premises machines: `Connected` or `Disconnected` for a
        # Microsoft.HybridCompute machine's ARM JSON (whether its agent is linked and answering).
        self.arc_status = None

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def effective_time(self) -> float:
        """When a change made now takes effect."""
        return self.now() + self.knobs.propagation_delay

    # -- directory ----------------------------------------------------------------------------
    def add_application(self, display_name: str, *, app_id: str | None = None,
                        secret: str | None = None) -> Application:
        with self.lock:
            app = Application(new_guid(), app_id or new_guid(), display_name, self.now())
            if secret is not None:
                app.passwords.append(password_credential(secret, "initial", self.now()))
            self.applications[app.object_id] = app
            return app

    def add_service_principal(self, app_id: str, display_name: str, *,
                              kind: str = "Application", mi_resource_id: str | None = None,
                              graph_write: bool = False) -> ServicePrincipal:
        with self.lock:
            sp = ServicePrincipal(new_guid(), app_id, display_name, kind, mi_resource_id,
                                  self.now(), graph_write)
            self.service_principals[sp.object_id] = sp
            return sp

    def application_by_app_id(self, app_id: str) -> Application | None:
        with self.lock:
            for app in self.applications.values():
                if app.app_id.lower() == app_id.lower():
                    return app
        return None

    def resource_application(self, resource: str) -> Application | None:
        """The application a token request names as its resource: by an app ID URI or its
        appId, when the tenant has a service principal for it (“Microsoft identity platform
        and the OAuth 2.0 client credentials flow”: otherwise AADSTS500011)."""
        wanted = resource.rstrip("/").lower()
        if not wanted:
            return None
        with self.lock:
            for app in self.applications.values():
                names = [u.rstrip("/").lower() for u in app.identifier_uris] + [app.app_id.lower()]
                if wanted in names:
                    break
            else:
                return None
        return app if self.sp_by_app_id(app.app_id) is not None else None

    def sp_by_app_id(self, app_id: str) -> ServicePrincipal | None:
        with self.lock:
            for sp in self.service_principals.values():
                if sp.app_id.lower() == app_id.lower():
                    return sp
        return None

    def principal(self, object_id: str) -> ServicePrincipal | None:
        with self.lock:
            return self.service_principals.get(object_id.lower()) or next(
                (sp for sp in self.service_principals.values()
                 if sp.object_id.lower() == object_id.lower()), None)

    def add_user(self, user_principal_name: str, password: str, *,
                 display_name: str | None = None) -> User:
        with self.lock:
            if self.user_by_name(user_principal_name) is not None:
                raise ValueError(f"a user {user_principal_name!r} exists already")
            local = user_principal_name.split("@", 1)[0]
            user = User(new_guid(), user_principal_name, display_name or local, password,
                        self.now())
            self.users[user.object_id.lower()] = user
            return user

    def user(self, object_id: str) -> User | None:
        with self.lock:
            return self.users.get(object_id.lower())

    def user_by_name(self, user_principal_name: str) -> User | None:
        with self.lock:
            return next((u for u in self.users.values()
                         if u.user_principal_name.lower() == user_principal_name.lower()), None)

    # -- subscriptions ------------------------------------------------------------------------
    def add_subscription(self, display_name: str, subscription_id: str | None = None) -> Subscription:
        with self.lock:
            sub = Subscription(subscription_id or new_guid(), display_name)
            self.subscriptions[sub.subscription_id.lower()] = sub
            return sub

    def subscription(self, subscription_id: str) -> Subscription | None:
        return self.subscriptions.get(subscription_id.lower())

    # -- role assignments ---------------------------------------------------------------------
    def assign_role(self, *, scope: str, role_definition_id: str, principal_id: str,
                    principal_type: str = "ServicePrincipal", created_by: str | None = None,
                    name: str | None = None, immediate: bool = False) -> RoleAssignment:
        """Create an assignment; it is in force after the propagation delay unless `immediate`."""
        with self.lock:
            name = name or new_guid()
            scope = scope.rstrip("/") or "/"
            rid = f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments/{name}"
            now = self.now()
            ra = RoleAssignment(rid, name, scope, role_definition_id, principal_id, principal_type,
                                created_by, now, now if immediate else self.effective_time())
            self.role_assignments[arm_key(rid)] = ra
            self._by_principal = None  # rbac.assignments_in_force's index, built again
            return ra

    def assignments_of(self, principal_id: str) -> list[RoleAssignment]:
        """Every assignment (removed ones too) of this principal (lower-case object id), in
        creation order; call with the lock held."""
        if self._by_principal is None:
            index: dict[str, list[RoleAssignment]] = {}
            for ra in self.role_assignments.values():
                index.setdefault(ra.principal_id.lower(), []).append(ra)
            self._by_principal = index
        return self._by_principal.get(principal_id, [])

    def remove_role_assignment(self, key: str) -> RoleAssignment | None:
        with self.lock:
            ra = self.role_assignments.get(arm_key(key))
            if ra is None or ra.removed_at is not None:
                return None
            ra.removed_at = self.effective_time()
            return ra

    def visible_role_assignments(self) -> list[RoleAssignment]:
        """Assignments ARM lists: created and not deleted (listing is immediate, enforcement is not)."""
        with self.lock:
            return [ra for ra in self.role_assignments.values() if ra.removed_at is None]

    def allocate_ip(self) -> str:
        """A fresh loopback address for a public IP: the VM's SSH server binds to it."""
        for _ in range(1000):  # bounded: a probe that always says "taken" must not hang ARM
            with self.lock:
                self.next_public_ip += 1
                n = self.next_public_ip
            address = f"127.10.{n // 250 % 255}.{n % 250 + 1}"
            if self.address_taken is None or not self.address_taken(address):
                break
        return address

    # -- lifecycle events (VMs start and stop) --------------------------------------------------
    def emit(self, event: str, resource: dict) -> None:
        for listener in list(self.listeners):
            listener(event, resource)


def password_credential(secret: str, display_name: str | None, now: float,
                        lifetime_days: int = 365) -> dict:
    import datetime as _dt

    start = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    end = start + _dt.timedelta(days=lifetime_days)
    return {
        "customKeyIdentifier": None,
        "displayName": display_name,
        "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hint": secret[:3],
        "keyId": new_guid(),
        "secretText": secret,
        "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
