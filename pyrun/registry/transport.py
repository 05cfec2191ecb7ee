"""The HTTP transport under the registry client, and per-host options.

The client only needs ``transport.request(method, url, headers=…, data=…,
stream=…)`` returning an object with ``status_code``, ``headers``
(case-insensitive), ``url`` (after redirects), ``content``,
``iter_content(n)`` and ``close()`` — what ``requests.Response`` has.
:class:`RequestsTransport` is the real one; unit tests pass a fake.

Connection-level failures are translated to :class:`TransportError` here so
the client never sees a requests exception.
"""
from dataclasses import dataclass, field

import requests

from pyrun.errdefs import FailedPrecondition, InvalidArgument, Unavailable

DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
TIMEOUT = (30, 120)  # seconds: connect, between bytes read


class TransportError(Unavailable):
    """The connection failed or dropped (refused, reset, timed out, body cut
    short).  Retrying may succeed."""


@dataclass(frozen=True)
class HostOptions:
    """How to reach one registry host.

    ``plain_http``: speak HTTP, not HTTPS (containerd's ``--plain-http``).
    ``ca_file``: a PEM bundle to trust for this host's TLS certificate.
    ``insecure_tls``: skip TLS verification (self-signed test registries).
    """
    plain_http: bool = False
    ca_file: str | None = None
    insecure_tls: bool = False


@dataclass
class Hosts:
    """Per-host options, keyed by ``host[:port]`` as written in references.
    Hosts not listed use HTTPS with the system's CAs."""
    options: dict = field(default_factory=dict)

    @classmethod
    def plain_http(cls, *hosts):
        """Shortcut: these hosts speak plain HTTP."""
        return cls({h: HostOptions(plain_http=True) for h in hosts})

    def get(self, host):
        return self.options.get(host, HostOptions())

    def base_url(self, host):
        """``http(s)://<endpoint>`` for a reference's domain (docker.io is
        served from registry-1.docker.io)."""
        endpoint = DOCKER_HUB_ENDPOINT if host == "docker.io" else host
        return ("http://" if self.get(host).plain_http else "https://") + endpoint

    def verify(self, host):
        """The ``verify`` argument requests wants for ``host``."""
        opts = self.get(host)
        if opts.insecure_tls:
            return False
        return opts.ca_file or True


class RequestsTransport:
    """The real transport: one ``requests.Session`` (connection pooling,
    redirects followed; requests drops the Authorization header when a
    redirect leaves the host, which is what a blob redirect to a CDN needs).
    Safe to share between the fetch threads."""

    def __init__(self, hosts=None, timeout=TIMEOUT):
        self.hosts = hosts or Hosts()
        self.timeout = timeout
        self.session = requests.Session()

    def request(self, method, url, *, host, headers=None, data=None, stream=False):
        """Send one request; ``host`` is the reference's domain whose TLS
        options apply.  Raises TransportError for connection failures,
        FailedPrecondition when TLS verification fails, InvalidArgument for
        a malformed URL."""
        try:
            return self.session.request(method, url, headers=headers, data=data, stream=stream,
                                        verify=self.hosts.verify(host), timeout=self.timeout)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as e:
            raise InvalidArgument(f"{method} {url}: {e}") from None
        except requests.exceptions.SSLError as e:
            # Not retried: only a change of configuration helps.
            raise FailedPrecondition(f"{method} {url}: TLS failed: {e} (give a CA file, or opt in "
                                     "to insecure TLS or plain HTTP for this host)") from None
        except requests.exceptions.RequestException as e:
            raise TransportError(f"{method} {url}: {e}") from None

    def close(self):
        self.session.close()


def iter_body(response, chunk_size=1 << 20):
    """Iterate a streamed body, translating a dropped connection into
    TransportError."""
    try:
        yield from response.iter_content(chunk_size)
    except requests.exceptions.RequestException as e:
        raise TransportError(f"reading {response.url}: {e}") from None
