"""The data-access policy: which tables, files and storage endpoints a tenant's specs may name.

Owns :class:`DataPolicy` and its one check, :meth:`DataPolicy.check_spec`, which the master's
service calls before a session is planned, so a refused spec costs no I/O: no listing, no
footer, no vocabulary read, and no message that could tell whether a path exists, how many
files it holds or what they contain. Pure: no grpc, no file system access (local paths are
normalised with ``os.path.realpath``, which resolves symlinks and ``..``).

Rules (``dpp master --allow-table``, ``--allow-endpoint``; each ``[TENANT=]VALUE``, a value
without a tenant applying to every tenant):

* every URI a spec names (``table_uri``, and every op parameter named ``path`` or ending in
  ``_path``/``_uri``, e.g. ``map_id``'s vocabulary) must lie under one of the tenant's table
  prefixes. A prefix names its scheme (``s3://bucket/warehouse/``, ``/data/tables/``), so
  ``http://`` or ``s3://`` URIs are refused unless a prefix of that scheme allows them. A URI
  with a query string (``?endpoint_override=...``) is refused outright;
* a storage option naming a network location (a key containing ``endpoint``, ``url``,
  ``host``, ``proxy`` or ``domain``) must equal one of the tenant's allowed endpoints; by
  default none is, so clients use the endpoints the workers are configured with.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence

from dpp_server.errors import PermissionDeniedError
from dpp_server.spec import Spec

_ENDPOINT_KEY = re.compile(r"endpoint|url|host|proxy|domain", re.IGNORECASE)
_PATH_PARAM = re.compile(r"^(path|.*_path|.*_uri)$")


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """The data-access policy: what a tenant's specs may read (see docs/security.md).

    Attributes:
        allow_table: comma-separated [TENANT=]PREFIX: table URIs, vocabularies and any other
            file a spec names must lie under one of its tenant's prefixes; a prefix without
            TENANT= applies to every tenant. The prefix names the scheme
            ('s3://bucket/warehouse/', '/data/tables/'). Empty: nothing is allowed (an
            --insecure master: anything).
        allow_endpoint: comma-separated [TENANT=]URL: storage endpoints a spec's
            storage_options may name (endpoint_url and the like). Empty: none.
    """

    allow_table: str = ""
    allow_endpoint: str = ""


def _per_tenant(text: str) -> dict[str, tuple[str, ...]]:
    """``"a=x,y, b=z"`` -> ``{"a": ("x",), "": ("y",), "b": ("z",)}`` (``""``: every tenant)."""
    table: dict[str, list[str]] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        tenant, sep, value = item.partition("=")
        if not sep or "://" in tenant or "/" in tenant:
            tenant, value = "", item
        table.setdefault(tenant.strip(), []).append(value.strip())
    return {k: tuple(v) for k, v in table.items()}


def normalize_uri(uri: str) -> str:
    """A canonical form to compare with prefixes: local paths absolute with symlinks and
    ``..`` resolved; other schemes lower-cased with ``..`` and ``//`` folded.

    Raises:
        ValueError: the URI carries a query string or fragment (they can name endpoints).
    """
    if "?" in uri or "#" in uri:
        raise ValueError("a URI with a query string or fragment")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() in ("file", "local"):
        path = rest if sep else uri
        return os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    if not rest:
        return scheme.lower() + "://"
    normalized = posixpath.normpath("/" + rest).lstrip("/")
    if rest.endswith("/"):
        normalized += "/"
    return f"{scheme.lower()}://{normalized}"


def _under(uri: str, prefix: str) -> bool:
    if uri == prefix.rstrip("/") or uri == prefix:
        return True
    return uri.startswith(prefix if prefix.endswith("/") else prefix + "/")


class DataPolicy:
    """The tenants' table prefixes and endpoints. Immutable after construction: thread-safe.

    Args:
        settings: the operator's rules.
        open_by_default: with no table rule at all, allow every URI (an --insecure lab).
    """

    def __init__(self, settings: PolicySettings, *, open_by_default: bool = False) -> None:
        self._tables = {
            tenant: tuple(_normalize_prefix(p) for p in prefixes)
            for tenant, prefixes in _per_tenant(settings.allow_table).items()
        }
        self._endpoints = _per_tenant(settings.allow_endpoint)
        self._open = open_by_default and not self._tables

    def prefixes(self, tenant: str) -> tuple[str, ...]:
        return self._tables.get(tenant, ()) + self._tables.get("", ())

    def endpoints(self, tenant: str) -> tuple[str, ...]:
        return self._endpoints.get(tenant, ()) + self._endpoints.get("", ())

    def check_uri(self, uri: str, tenant: str, field: str) -> None:
        """Raises PermissionDeniedError unless ``uri`` lies under one of the tenant's
        prefixes; the message names the field and the rule, never the file system's state."""
        if self._open:
            return
        who = f"tenant {tenant!r}" if tenant else "this caller"
        try:
            normalized = normalize_uri(uri)
        except ValueError as exc:
            raise PermissionDeniedError(
                f"{field}: {uri!r} refused: {exc} is not allowed (rule: URIs name no query "
                "string; give storage options instead)"
            ) from None
        prefixes = self.prefixes(tenant)
        if any(_under(normalized, p) for p in prefixes):
            return
        allowed = ", ".join(repr(p) for p in prefixes) if prefixes else "nothing"
        raise PermissionDeniedError(
            f"{field}: {uri!r} refused by the data-access policy (rule --allow-table: {who} "
            f"may read under {allowed}); use a table under an allowed prefix, or ask the "
            "operator to allow it"
        )

    def check_spec(self, spec: Spec, tenant: str) -> None:
        """Checks every URI and endpoint a spec names against the tenant's rules.

        Raises:
            PermissionDeniedError: the first URI or storage option the policy refuses.
        """
        self.check_uri(spec.table_uri, tenant, "table_uri")
        for field, uri in _named_files(spec):
            self.check_uri(uri, tenant, field)
        self.check_storage_options(spec.storage_options, tenant)

    def check_storage_options(self, options: Mapping[str, str], tenant: str) -> None:
        allowed = self.endpoints(tenant)
        for key, value in options.items():
            if not _ENDPOINT_KEY.search(key):
                continue
            if value.rstrip("/") in (e.rstrip("/") for e in allowed):
                continue
            who = f"tenant {tenant!r}" if tenant else "this caller"
            listed = ", ".join(repr(e) for e in allowed) if allowed else "none"
            raise PermissionDeniedError(
                f"storage_options.{key}: refused by the data-access policy (rule "
                f"--allow-endpoint: {who} may name endpoints {listed}); drop the option to "
                "use the workers' configured endpoint, or ask the operator to allow it"
            )


def _normalize_prefix(prefix: str) -> str:
    normalized = normalize_uri(prefix)
    return normalized


def _named_files(spec: Spec) -> Iterator[tuple[str, str]]:
    """(field path, URI) of every op parameter that names a file."""
    for i, feature in enumerate(spec.features):
        for j, call in enumerate(feature.ops):
            for name, value in call.params.items():
                if isinstance(value, str) and _PATH_PARAM.match(name):
                    yield f"features[{i}].ops[{j}].{name}", value


def local_prefixes(extra: Sequence[str] = ()) -> str:
    """``dpp up``'s rule: the user's own places (home, the current folder, the temp folder)."""
    import tempfile

    places = [os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir(), *extra]
    return ",".join(dict.fromkeys(os.path.realpath(p) for p in places))
