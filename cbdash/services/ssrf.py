"""The SSRF guard: one address policy for save, ping and every attempt.

A URL is acceptable when it is http(s), its host is a well-formed name or IP
literal, and every address it resolves to is public -- or the operator opened
it with ``CBDASH_ALLOWED_TARGETS``. The HTTP transport connects only to the
address this module checked, so DNS rebinding between check and connect
cannot reach a private address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..constants import ErrorClass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> getaddrinfo-style tuples; tests inject one to control what names resolve to.
Resolver = Callable[[str, int], list[tuple]]

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# Prefixes that embed an IPv4 address in an IPv6 one: the embedded address decides.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Cloud metadata endpoints that are not already private or link-local everywhere.
_METADATA = (ipaddress.ip_network("100.100.100.200/32"), ipaddress.ip_network("fd00:ec2::/32"))
# Names that mean "this machine" or "the cloud metadata service" whatever DNS says
# (RFC 6761 reserves localhost; /etc/hosts may map the others).
_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
    }
)
_resolver_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cbdash-dns")

ALLOW_HINT = (
    "To reach an internal service on purpose, add its address or host name to "
    "CBDASH_ALLOWED_TARGETS (for example CBDASH_ALLOWED_TARGETS=10.0.0.0/8,crm.internal)."
)


class TargetError(Exception):
    """A URL or address the guard refuses; ``error_class`` says which check failed."""

    def __init__(self, message: str, error_class: str = ErrorClass.BLOCKED) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class


@dataclass(frozen=True)
class TargetPolicy:
    """The operator's allowlist: networks and host names the guard lets through."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_setting(cls, text: str) -> TargetPolicy:
        """Parse ``CBDASH_ALLOWED_TARGETS`` (CIDRs, addresses and host names)."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in (text or "").split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.hosts)

    def address_allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour:
        return ip.sixtofour
    # IPv4-compatible (deprecated) ::a.b.c.d
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def address_blocked(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "a scoped IPv6 address"
        if ip.teredo:
            # A tunnel through a relay to an address we cannot see: never a webhook receiver.
            return "a Teredo tunnel address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = address_blocked(inner)
            return f"{reason} (embedded in {ip})" if reason else None
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address (cloud metadata lives here)"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (any(ip in net for net in _METADATA if net.version == ip.version), "a metadata address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "a non-public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, including decimal/octal/hex IPv4 forms; else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host.lower()) and not re.search(r"[g-wyz]", host.lower()):
        try:  # inet_aton accepts 2130706433, 0x7f.1, 0177.0.0.1 ... as the OS resolver does
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def split_url(url: str) -> tuple[str, str, int]:
    """Validate the URL's shape; return (scheme, host, port) or raise TargetError."""
    invalid = ErrorClass.INVALID_URL
    if not isinstance(url, str) or not url.strip():
        raise TargetError("Enter a URL.", invalid)
    if len(url) > 2048:
        raise TargetError("The URL is longer than 2048 characters.", invalid)
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise TargetError("The URL contains spaces or control characters.", invalid)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Cs") for c in url):
        # Invisible and bidi-override characters make a URL read differently than it is.
        raise TargetError("The URL contains invisible or direction-changing characters.", invalid)
    if "\\" in url:
        # Parsers disagree about backslashes (http://a\\@b/ is host a for some, b for
        # others); refuse them so the host we check is the host every parser sees.
        raise TargetError("The URL contains a backslash; use / in URLs.", invalid)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"The URL is not valid: {exc}.", invalid) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetError("Only http:// and https:// URLs can be called.", invalid)
    host = parts.hostname or ""
    if not host:
        raise TargetError("The URL has no host name.", invalid)
    if "%" in host or ("[" in parts.netloc and ":" not in host):
        # Zone ids and percent-encoded hosts have no public use and confuse parsers.
        raise TargetError("The host name is not valid.", invalid)
    if port == 0:
        raise TargetError("Port 0 cannot be called.", invalid)
    if parse_ip_literal(host) is None:
        try:
            ascii_host = host.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise TargetError("The host name is not valid.", invalid) from exc
        labels = ascii_host.rstrip(".").split(".")
        if len(ascii_host) > 253 or not all(_LABEL.match(label) for label in labels):
            raise TargetError(
                "The host name is not valid (empty label, a label over 63 characters, "
                "or characters a host name cannot have).",
                invalid,
            )
        if parse_ip_literal(ascii_host) is not None:
            # A Unicode spelling of an address (e.g. circled digits): judge the address.
            host = str(parse_ip_literal(ascii_host))
        elif labels[-1].isdigit():
            # Not a name (no top-level domain is numeric) and not an address inet_aton reads.
            raise TargetError("The host is neither a valid IP address nor a host name.", invalid)
        else:
            host = ascii_host
    return scheme, host, port or (443 if scheme == "https" else 80)


def system_resolver(host: str, port: int) -> list[tuple]:
    """The operating system's resolver (DNS, /etc/hosts, ...)."""
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


_DNS_REASONS = {
    socket.EAI_NONAME: "no such host name",
    socket.EAI_AGAIN: "the DNS server did not answer (temporary failure; try again)",
    socket.EAI_FAIL: "the DNS server failed",
}
if hasattr(socket, "EAI_NODATA"):
    _DNS_REASONS[socket.EAI_NODATA] = "the name has no addresses"


def _dns_reason(exc: BaseException) -> str:
    """The resolver's error in words (no ``[Errno -2]``)."""
    if isinstance(exc, UnicodeError):
        return "the host name is not a valid domain name"
    code = exc.args[0] if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], int) else None
    if code in _DNS_REASONS:
        return _DNS_REASONS[code]
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def resolve(
    host: str, port: int, timeout: float, resolver: Resolver | None = None
) -> list[tuple[int, IPAddress]]:
    """Resolve ``host`` within ``timeout`` seconds into (family, address) pairs."""
    literal = parse_ip_literal(host)
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(family, literal)]
    future = _resolver_pool.submit(resolver or system_resolver, host, port)
    try:
        infos = future.result(timeout=max(timeout, 0.05))
    except FutureTimeout as exc:
        raise TargetError(f"DNS lookup for {host} timed out.", ErrorClass.TIMEOUT) from exc
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise TargetError(f"DNS lookup for {host} failed: {_dns_reason(exc)}.", ErrorClass.DNS) from exc
    seen: list[tuple[int, IPAddress]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        except ValueError:
            continue
        if (family, ip) not in seen:
            seen.append((family, ip))
    if not seen:
        raise TargetError(f"DNS lookup for {host} returned no addresses.", ErrorClass.DNS)
    return seen


def name_blocked(host: str) -> bool:
    """True for names that always mean this machine or a metadata service."""
    name = host.lower().rstrip(".")
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def check_addresses(
    host: str, addresses: list[tuple[int, IPAddress]], policy: TargetPolicy
) -> list[tuple[int, IPAddress]]:
    """Keep the addresses the policy allows; raise TargetError when any is refused."""
    if policy.host_allowed(host):
        return addresses
    if name_blocked(host):
        raise TargetError(f"{host} is this machine or a metadata service. {ALLOW_HINT}")
    literal = parse_ip_literal(host)
    for _family, ip in addresses:
        if policy.address_allowed(ip):
            continue
        reason = address_blocked(ip)
        if reason:
            # One bad address blocks the host: an attacker controls which one we'd pick.
            if literal is not None:
                # Spell out what 2130706433, 0x7f.1 or 0177.0.0.1 really are.
                spelled = host if ip.version == 6 or str(ip) == host else f"{host} (that is {ip})"
                raise TargetError(f"{spelled} is {reason}. {ALLOW_HINT}")
            raise TargetError(f"{host} resolves to {ip}, {reason}. {ALLOW_HINT}")
    return addresses


def check_target(
    url: str, policy: TargetPolicy, timeout: float = 2.0, resolver: Resolver | None = None
) -> None:
    """Validate a URL for saving: its shape, and its addresses when the name resolves.

    A name that does not resolve yet is accepted (the receiver may not be deployed);
    every attempt resolves and checks again.
    """
    _scheme, host, port = split_url(url)
    if name_blocked(host) and not policy.host_allowed(host):
        raise TargetError(f"{host} is this machine or a metadata service. {ALLOW_HINT}")
    try:
        addresses = resolve(host, port, timeout, resolver)
    except TargetError as exc:
        if exc.error_class in (ErrorClass.DNS, ErrorClass.TIMEOUT):
            return
        raise
    check_addresses(host, addresses, policy)
