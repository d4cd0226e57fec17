"""The running gateway: opens the store, binds SIP and media, serves until told to stop.

`run(config)` is what `edgegw run` calls. Start-up order matters: calls left
open by a crash are closed first (DESIGN rule 5), subscribers are provisioned
from the config, the SIP listeners are bound, then the control socket says the
gateway is up. Shutdown (SIGTERM/SIGINT) ends calls with BYE and writes their
CDRs before the sockets close.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from gateway import __version__
from gateway.calls.accounts import open_credit
from gateway.calls.core import CallCore
from gateway.calls.partners import PartnerService
from gateway.calls.registrar import ExpiryPolicy, Registrar
from gateway.calls.trunk_health import TrunkMonitor
from gateway.calls.trunk_registration import TrunkRegistrations
from gateway.config import Config
from gateway.control.capture import CaptureRegistry
from gateway.control.cdr_query import CdrQuery, fetch_cdrs
from gateway.control.config_edit import ConfigEditor
from gateway.control.diagnostics import diagnostics_handlers
from gateway.control.disk import DiskMonitor, LogFileError, open_log_file
from gateway.control.http import run_http
from gateway.control.metrics import gateway_registry
from gateway.control.operations import Operations
from gateway.control.provisioning import Provisioning
from gateway.control.reload import Reloader
from gateway.control.retention import Retention
from gateway.control.sd_notify import Notifier
from gateway.control.server import ControlServer
from gateway.control.watchdog import feed_watchdog, stall_loop
from gateway.logs import configure_logging
from gateway.net.roles import address_roles, media_addresses_for
from gateway.sip.auth import DigestServer
from gateway.sip.transaction import Timers
from gateway.store.sqlite import SqliteStore
from gateway.transport.certificates import ensure_self_signed, load_pair
from gateway.transport.dns import Resolver, families_of
from gateway.transport.endpoint import SipEndpoint
from gateway.transport.tls import TlsContexts, client_context, server_context

log = structlog.get_logger("edgegw")


def var_dir(config: Config) -> Path:
    path = Path(config.general.var_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def control_socket_path(config: Config) -> Path:
    if config.control.socket:
        return Path(config.control.socket)
    return Path(config.general.var_dir) / "control.sock"


def nonce_secret(directory: Path) -> bytes:
    """The digest nonce key survives restarts, so challenges issued before one stay valid."""
    path = directory / "nonce.key"
    if path.exists():
        return path.read_bytes()
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


def tls_contexts(config: Config, directory: Path, tls_hosts: list[str]) -> TlsContexts:
    """The configured certificate, else the self-signed one under `directory`/tls/ (made
    on first run); no server side when nothing listens for TLS."""
    sip = config.sip
    server = None
    if tls_hosts:
        if sip.tls_cert:
            pair = load_pair(sip.tls_cert, sip.tls_key)  # checked at load; it may be gone since
        else:
            pair = ensure_self_signed(directory / "tls", tls_hosts)
        server = server_context(pair)
    client = client_context(verify=sip.tls_verify_server, ca_file=sip.tls_ca_file)
    return TlsContexts(server, client, sip.tls_handshake_timeout)


class Gateway:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.started = time.time()
        directory = var_dir(config)
        self.store = SqliteStore(directory / "edgegw.sqlite")
        sip = config.sip
        self.registrar = Registrar(
            self.store, ExpiryPolicy(sip.min_expires, sip.max_expires, sip.default_expires)
        )
        digest = DigestServer(
            sip.realm,
            nonce_secret(directory),
            nonce_ttl=sip.nonce_ttl,
            algorithms=tuple(sip.auth_algorithms),
        )
        # The media addresses: media.host (and host6), then one per network role.
        self.core = CallCore(
            config, self.store, self.registrar, digest, media_addresses_for(config)
        )
        listen = config.sip.listen
        tls = [(entry.host, entry.port) for entry in listen if entry.transport == "tls"]
        self.endpoint = SipEndpoint(
            udp=[(entry.host, entry.port) for entry in listen if entry.transport == "udp"],
            tcp=[(entry.host, entry.port) for entry in listen if entry.transport == "tcp"],
            timers=Timers(t1=sip.t1, t2=sip.t2, t4=sip.t4),
            tcp_idle_timeout=sip.tcp_idle_timeout,
            handler=self.core,
            tls=tls,
            tls_contexts=tls_contexts(config, directory, [host for host, _port in tls]),
            dscp=config.network.dscp_sip,
            address_roles=address_roles(config),  # requests leave from their role's listener
        )
        self.core.endpoint = self.endpoint
        # The partner API; its click-to-call calls are placed by the core.
        self.partners = PartnerService(config, self.store, self.core)
        self.metrics = gateway_registry(self.core)
        # Trunks: DNS (RFC 3263) targets, OPTIONS health, outbound registrations.
        self.dns = Resolver(config.dns, families=families_of(e.host for e in listen))
        self.core.resolver = self.dns
        self.trunk_monitor = TrunkMonitor(config.trunks, self.endpoint, self.dns)
        self.core.trunk_monitor = self.trunk_monitor  # routing skips trunks that are down
        self.trunk_registrations = TrunkRegistrations(config.trunks, self.endpoint, self.dns)
        # systemd notify/watchdog, config reload and disk space (gateway.control.*).
        self.notifier = Notifier.from_environment()
        self.disk = DiskMonitor(directory, config.general.disk_reserve_mb)
        self.reloader = Reloader(self, config_path)
        # Field operations (status details, call show/hangup, regs, trunks, drain).
        self.operations = Operations(self, base_status=self._status)
        # Per-call packet captures under var/captures; they stop first when the disk fills.
        self.captures = CaptureRegistry(
            directory / "captures",
            calls=self.core.calls,
            endpoint=self.endpoint,
            disk_low=self.disk.disk_low,
        )
        # Retention: captures, CDR exports and rotated logs pruned by size and age.
        self.retention = Retention(lambda: self.config.general, directory, self.captures)
        self.control = ControlServer(
            control_socket_path(config),
            {
                **self.captures.handlers(),
                **self.retention.handlers(),
                "config_reload": self.reloader.handle,
                "debug_stall": stall_loop,
                "calls": self._calls,
                "cdr": self._cdr,
                **self.operations.handlers(),
                # Provisioning, backup and the diag bundle (gateway.control.provisioning).
                **Provisioning(self.store, self.core, self.registrar, self.store.path).handlers(),
                **diagnostics_handlers(lambda: self.config),
                # Trunks and partners: edits of the config file, applied by a reload.
                **ConfigEditor(self.reloader).handlers(),
            },
        )
        self._core_scope = trio.CancelScope()

    async def prepare(self) -> None:
        await self.store.open()
        recovered = await self.store.recover_open_calls(time.time())
        for cdr in recovered:
            log.warning("closed call left open by a crash", call=cdr.id, end=cdr.end)
        for subscriber in (entry.as_subscriber() for entry in self.config.subscribers):
            await self.store.upsert_subscriber(subscriber)
        self.core.set_subscribers(await self.store.list_subscribers())
        self.core.credit = await open_credit(self.store, self.config, time.time())
        await self.registrar.load()

    async def serve(self) -> None:
        await self.prepare()
        try:
            async with trio.open_nursery() as nursery:
                # Signals first: a SIGTERM once SIP answers must always end calls politely.
                await nursery.start(self._signals, nursery.cancel_scope)
                await nursery.start(self.endpoint.run)
                nursery.start_soon(self._run_core)
                await nursery.start(self.captures.run)
                await nursery.start(self.retention.run)  # a first pass before ready
                await nursery.start(self.control.serve)
                await nursery.start(run_http, self.config, self.partners, self.metrics)
                nursery.start_soon(self._checkpoints)
                nursery.start_soon(self.reloader.trunk_watch.run)  # restarted by a reload
                nursery.start_soon(self.trunk_registrations.run)
                log.info(
                    "edgegw ready",
                    version=__version__,
                    sip=[f"{e.transport}:{e.host}:{e.port}" for e in self.config.sip.listen],
                    media=[
                        f"{a.role or '-'}:{a.allocator.host}:{self.config.media.port_min}-"
                        f"{self.config.media.port_max}"
                        for a in self.core.media_addresses
                    ],
                )
                # SIP, control and HTTP are up (each started above): tell systemd, and feed
                # its watchdog from this loop, so a stalled loop stops feeding it.
                self.notifier.ready("serving")
                if self.notifier.watchdog_interval is not None:
                    nursery.start_soon(
                        feed_watchdog, self.notifier, self.notifier.watchdog_interval
                    )
        finally:
            with trio.CancelScope(shield=True):
                await self._checkpoint_now()
                await self.store.close()

    async def _run_core(self) -> None:
        with self._core_scope:
            await self.core.run()

    async def _signals(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reloader.on_sighup()  # a refusal is logged; serving goes on
                    continue
                log.info("stopping", signal=signal.Signals(signum).name, calls=len(self.core.calls))
                break
        self.notifier.stopping("ending calls")
        # Calls first, so their BYEs leave while the SIP sockets are still open.
        self._core_scope.cancel()
        await self.trunk_registrations.shutdown()  # Expires: 0 while SIP still runs
        await trio.sleep(0.2)
        scope.cancel()

    async def _checkpoints(self) -> None:
        while True:
            await trio.sleep(self.config.general.checkpoint_interval)
            await self._checkpoint_now()

    async def _checkpoint_now(self) -> None:
        now = time.time()
        rows = [call.record.checkpoint(now) for call in self.core.calls.values()]
        credit = self.core.credit
        if credit is not None:  # each call's payer and grant, for a restart to charge it
            rows = [credit.checkpoint(row) for row in rows]
        await self.store.checkpoint_active_calls(rows, now)

    # ---- control handlers ----------------------------------------------------------------

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        endpoint, core = self.endpoint, self.core
        return {
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "draining": core.draining,
            **self.disk.snapshot(),  # disk_low: captures stop, CDRs are still written
            "retention": self.retention.snapshot(),
            "sip_listen": [
                f"{e.transport}:{e.host}:{e.port}" + (f" ({role})" if role else "")
                for e in self.config.sip.listen
                for role in [address_roles(self.config).get(e.host, "")]
            ],
            "registrations": self.registrar.count(),
            "active_calls": len(core.calls),
            "calls_started": core.stats.calls_started,
            "calls_refused": core.stats.calls_refused,
            "calls_rate_limited": core.stats.calls_rate_limited,
            "auth_challenges": core.stats.auth_challenges,
            "auth_failures": core.stats.auth_failures,
            "sip_received": endpoint.stats.received,
            "sip_malformed": endpoint.stats.malformed,
            "sip_overload_503": endpoint.stats.overload_503,
            "media_ports_in_use": self.core.media_addresses.in_use,
            "media_ports_capacity": self.core.media_addresses.capacity,
            "media_addresses": [
                {
                    "role": a.role,
                    "host": a.allocator.host,
                    "sdp_host": a.sdp_host,
                    "in_use": a.allocator.in_use,
                    "capacity": a.allocator.capacity,
                }
                for a in self.core.media_addresses
            ],
            "trunk_health": self.trunk_monitor.snapshot(),
            "trunk_registrations": self.trunk_registrations.snapshot(),
            "trunks": [
                {"name": t.name, "address": f"{t.host}:{t.port}"} for t in self.config.trunks
            ],
        }

    async def _calls(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [call.summary() for call in self.core.calls.values()]

    async def _cdr(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """One page of CDRs, every field (money too): `edgegw cdr` and `edgegw cdr export`."""
        cdrs = await fetch_cdrs(self.store, CdrQuery.from_args(args))
        return [msgspec.to_builtins(cdr) for cdr in cdrs]


def run(config: Config, config_path: Path | None = None) -> int:
    """Run the gateway in the foreground until SIGTERM/SIGINT; the process exit code.
    `config_path` is the file `config` came from, read again by a reload (SIGHUP)."""
    configure_logging(config.general.log_level, config.general.log_format)
    try:
        log_file = open_log_file(config.general)
    except LogFileError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    failures: list[OSError] = []
    try:
        trio.run(Gateway(config, config_path).serve)
    except* OSError as group:
        # A socket that cannot be bound fails inside a nursery, so it arrives wrapped in
        # (possibly nested) exception groups; the operator gets the errors, not a traceback.
        failures = _leaf_errors(group)
    finally:
        if log_file is not None:
            log_file.close()
    if failures:
        log.error("cannot start", error="; ".join(str(exc) for exc in failures))
        return 1
    return 0


def _leaf_errors(group: ExceptionGroup[OSError]) -> list[OSError]:
    leaves: list[OSError] = []
    for exc in group.exceptions:
        leaves += _leaf_errors(exc) if isinstance(exc, ExceptionGroup) else [exc]
    return leaves
