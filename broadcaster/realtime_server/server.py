"""The channel protocol: joins, broadcasts, leaves and token refreshes, with
the checks and refusals of Supabase's ``RealtimeChannel``
(``lib/realtime_web/channels/realtime_channel.ex`` in ``supabase/realtime``).

:class:`LocalRealtimeServer` is the package's server; the connections under
it are :class:`~.transport.Transport`'s.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog

from .peers import Peer, Subscription
from .protocol import Message
from .quotas import Quota, external_size, user_broadcast_size
from .tokens import TokenRefusal, is_refresh, token_for_join
from .transport import PHOENIX_TOPIC, Transport

__all__ = ["LocalRealtimeServer"]

log = structlog.get_logger("broadcaster.realtime_server")

CHANNEL_PREFIX: Final = "realtime:"
#: How often a private channel's token is checked again at most
#: (``@confirm_token_ms_interval`` of ``RealtimeChannel``), else at its expiry.
CONFIRM_TOKEN_INTERVAL_S: Final = 300.0


def _flag(value: object) -> bool:
    # Supabase's FlexibleBoolean: true, or the string "true".
    return value is True or (isinstance(value, str) and value.lower() == "true")


class LocalRealtimeServer(Transport):
    """A Supabase-Realtime-compatible broadcast server on ``host:port``.

    ``port=0`` picks a free port; read it from :attr:`port` after
    :meth:`start`. ``max_buffer_bytes`` bounds each subscriber's unsent
    backlog: past it the subscriber is closed with code 1013 so one slow
    reader can neither block the others nor grow memory without bound.
    :meth:`close` and :meth:`start` may alternate (stop and restart on the
    same port, as tests of reconnection do).

    ``key``: the only ``apikey`` accepted (None or empty: any). ``limits``: a
    plan's name (``free``, ``pro``, ``team``; ``none`` or None for no quota)
    or a :class:`~.quotas.Plan`. ``jwt_secret`` and ``private_roles``: how
    access tokens of private channels are checked (no secret: every private
    join is refused). ``clock`` gives the time in epoch seconds, for rates and
    token expiry.
    """

    # -- message dispatch (override points) --------------------------------------

    async def handle_message(self, peer: Peer, msg: Message) -> None:
        """Dispatch one decoded client message to its ``on_*`` handler."""
        event = msg["event"]
        topic = msg["topic"]
        if topic == PHOENIX_TOPIC and event == "heartbeat":
            await self.on_heartbeat(peer, msg)
        elif event == "phx_join":
            await self.on_join(peer, msg)
        elif topic not in peer.joins:
            await self._unmatched(peer, msg)
        elif event == "broadcast":
            await self.on_broadcast(peer, msg)
        elif event == "phx_leave":
            await self.on_leave(peer, msg)
        elif event == "access_token":
            await self.on_access_token(peer, msg)
        else:
            await self.on_other(peer, msg)

    async def _unmatched(self, peer: Peer, msg: Message) -> None:
        # Phoenix's answer to a message on a topic the socket has not joined
        # (encode_ignore in Phoenix's lib/phoenix/socket.ex), without a join_ref.
        await self.reply(peer, {**msg, "join_ref": None}, "error", {"reason": "unmatched topic"})

    async def on_heartbeat(self, peer: Peer, msg: Message) -> None:
        await self.reply(peer, msg, "ok", {})

    async def on_join(self, peer: Peer, msg: Message) -> None:
        """Join (or re-join) ``msg["topic"]`` with the options and checks of
        ``RealtimeChannel.join``: quotas first, then a private channel's token."""
        topic = msg["topic"]
        if not topic.startswith(CHANNEL_PREFIX):
            await self._unmatched(peer, msg)  # no channel route for it
            return
        channel = topic.removeprefix(CHANNEL_PREFIX)
        if not channel:
            await self._join_refused(peer, msg, "TopicNameRequired: You must provide a topic name")
            return
        payload = msg["payload"]
        config = payload.get("config")
        config = config if isinstance(config, dict) else {}
        broadcast = config.get("broadcast")
        broadcast = broadcast if isinstance(broadcast, dict) else {}
        private = _flag(config.get("private"))
        now = self._clock()
        if self._quotas is not None:
            refusal = self._quotas.join_refusal(
                now,
                counted=peer.counted,
                users=self._users,
                channels=len(peer.joins) - (topic in peer.joins),
            )
            if refusal is not None:
                self._count(refusal.quota)
                await self._join_refused(peer, msg, refusal.reason)
                if refusal.disconnect:
                    # The transport is told to disconnect: a normal close.
                    await peer.conn.close()
                return
        token = token_for_join(payload, peer.apikey) if private else None
        claims: dict[str, Any] | None = None
        if private:
            verdict = self._tokens.authorize(token, now)
            if isinstance(verdict, TokenRefusal):
                self.stats.unauthorized += 1
                await self._join_refused(peer, msg, verdict.join_reason(channel))
                return
            claims = verdict
        previous = peer.joins.get(topic)
        if previous is not None:
            self._unsubscribe(peer, previous)
        join_ref = msg.get("join_ref") or msg.get("ref")
        sub = Subscription(
            topic=topic,
            join_ref=None if join_ref is None else str(join_ref),
            ack=_flag(broadcast.get("ack", False)),
            self_broadcast=_flag(broadcast.get("self", False)),
            private=private,
            token=token,
        )
        peer.joins[topic] = sub
        self._topics.setdefault(topic, {})[peer] = sub
        if not peer.counted:
            peer.counted = True
            self._users += 1
        if self._quotas is not None:
            self._quotas.joined(now)
        self.stats.joins += 1
        if claims is not None:
            self._confirm_later(peer, sub, claims, now)
        await self.reply(peer, msg, "ok", {"postgres_changes": []})

    async def _join_refused(self, peer: Peer, msg: Message, reason: str) -> None:
        log.warning("join refused", peer=peer.id, topic=msg["topic"], reason=reason)
        await self.reply(peer, msg, "error", {"reason": reason})

    async def on_broadcast(self, peer: Peer, msg: Message) -> None:
        """Fan the broadcast out to the topic's other subscribers, then ack.

        The ack (if the sender joined with ``ack: true``) is written after the
        fan-out frames, so a sender that sees the ack knows they left. With
        limits, a payload over the plan's size is neither delivered nor acked:
        an ``ack: true`` sender gets ``payload_size_exceeded``.
        """
        topic = msg["topic"]
        sub = peer.joins[topic]
        self.stats.broadcasts += 1
        self.count_messages(1)
        quotas = self._quotas
        if quotas is not None:
            size = self.payload_size(msg)
            if not quotas.payload_fits(size):
                self._count(Quota.PAYLOAD)
                log.warning("broadcast refused: payload too large", peer=peer.id, size=size)
                if sub.ack:
                    await self.reply(peer, msg, "error", "payload_size_exceeded")
                return
        self.fan_out(topic, msg, exclude=None if sub.self_broadcast else peer)
        if sub.ack:
            await self.ack_broadcast(peer, msg)

    @staticmethod
    def payload_size(msg: Message) -> int:
        """The size Supabase measures a broadcast by (Erlang's external term
        size of the payload it decoded)."""
        user = msg.get("user_broadcast")
        if user is not None:
            return user_broadcast_size(user.event, user.payload, user.json, user.metadata)
        return external_size(msg["payload"])

    async def ack_broadcast(self, peer: Peer, msg: Message) -> None:
        """Send the broadcast's ``phx_reply`` ok. Override to delay or drop acks."""
        self.stats.acks += 1
        await self.reply(peer, msg, "ok", {})

    async def on_leave(self, peer: Peer, msg: Message) -> None:
        sub = peer.joins[msg["topic"]]
        self._unsubscribe(peer, sub)
        await self.reply(peer, msg, "ok", {})
        await self.send_wire(peer, self._close_frame(peer, sub))

    async def on_access_token(self, peer: Peer, msg: Message) -> None:
        """A token refresh. On a private channel a new token is checked at once;
        one that does not pass shuts the channel down, as Supabase does. Public
        channels keep no token."""
        sub = peer.joins[msg["topic"]]
        token = msg["payload"].get("access_token")
        if not sub.private or not is_refresh(token, sub.token):
            return
        sub.token = token
        now = self._clock()
        verdict = self._tokens.authorize(token, now)
        if isinstance(verdict, TokenRefusal):
            self.stats.unauthorized += 1
            self.shut_down(peer, sub, verdict.shutdown_message(sub.channel))
            return
        self._confirm_later(peer, sub, verdict, now)

    async def on_other(self, peer: Peer, msg: Message) -> None:
        """Any other event on a joined topic. Presence is not implemented and
        says so; anything else is ignored, as Supabase ignores it."""
        self.count_messages(1)
        if msg["event"] == "presence":
            await self.reply(peer, msg, "error", {"reason": "unsupported event 'presence'"})

    # -- private channels: the token over time -------------------------------------

    def _confirm_later(
        self, peer: Peer, sub: Subscription, claims: dict[str, Any], now: float
    ) -> None:
        if sub.expiry is not None:
            sub.expiry.cancel()
        delay = min(CONFIRM_TOKEN_INTERVAL_S, float(claims["exp"]) - now)
        sub.expiry = asyncio.get_running_loop().call_later(
            max(delay, 0.0), self._confirm_token, peer, sub
        )

    def _confirm_token(self, peer: Peer, sub: Subscription) -> None:
        # Still joined: leaving (or being shut down) cancels this timer.
        sub.expiry = None
        now = self._clock()
        verdict = self._tokens.authorize(sub.token, now)
        if isinstance(verdict, TokenRefusal):
            self.stats.unauthorized += 1
            self.shut_down(peer, sub, verdict.shutdown_message(sub.channel))
        else:
            self._confirm_later(peer, sub, verdict, now)
