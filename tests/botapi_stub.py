"""A small stand-in for the Telegram Bot API over HTTP on 127.0.0.1, for end-to-end bot tests.

It serves what a long-polling bot needs (getMe, getUpdates, getFile, file downloads, deleteWebhook,
setMyCommands, sendMessage, sendDocument, sendSticker, sendMediaGroup, edits and deletions), records
everything the bot sends, and keeps a transcript per chat (messages with their current text, documents,
stickers, deletions) so tests can assert on what a user would see. Standard library only:
a ThreadingHTTPServer in a daemon thread; all shared state sits behind one condition variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

BOT_API_DOWNLOAD_LIMIT = 20_000_000  # telegram.constants.FileSizeLimit.FILESIZE_DOWNLOAD
LONG_POLL_WAIT_S = 0.2  # answer an empty getUpdates quickly so tests (and shutdown) never wait long


@dataclass
class UploadedFile:
    """One file part of a multipart request."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class ApiCall:
    """One Bot API method call the bot made."""

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


@dataclass
class SentMessage:
    """A message the bot sent, as the chat would show it now."""

    chat_id: int
    message_id: int
    text: str | None = None
    caption: str | None = None
    document: UploadedFile | None = None
    sticker: UploadedFile | None = None
    media_group_id: str | None = None
    reply_markup: dict[str, Any] | None = None
    deleted: bool = False
    edits: list[str] = field(default_factory=list)


@dataclass
class _StoredFile:
    data: bytes
    file_path: str
    file_size: int  # what Telegram claims; may be set larger than data to test the download limit
    file_unique_id: str


class BotApiStub:
    """The stand-in server: push updates in, read what the bot did out."""

    def __init__(self, token: str, bot_id: int = 4242, username: str = "bgremover_test_bot") -> None:
        self.token = token
        self.bot_user = {"id": bot_id, "is_bot": True, "first_name": "BackgroundRemover", "username": username}
        self._cond = threading.Condition()
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._incoming_ids = itertools.count(1)
        self._outgoing_ids = itertools.count(10_000)
        self._file_ids = itertools.count(1)
        self._files: dict[str, _StoredFile] = {}
        self._files_by_path: dict[str, _StoredFile] = {}
        self.calls: list[ApiCall] = []
        self.messages: dict[tuple[int, int], SentMessage] = {}
        self.errors: list[str] = []  # requests the stub could not understand: a test should fail on any
        self.file_server_down = False  # when set, file downloads answer 502 Bad Gateway
        self.failing_methods: set[str] = set()  # Bot API methods that answer 502 Bad Gateway while listed
        self.languages: dict[int, str] = {}  # a user's Telegram language_code (default "en")
        self._media_groups = itertools.count(1)
        self._holding: list[tuple[str, dict[str, Any]]] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> BotApiStub:
        """Listen on an ephemeral port of 127.0.0.1."""
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="botapi-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        """For BOT_API_BASE_URL (python-telegram-bot appends the token)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/bot"

    @property
    def base_file_url(self) -> str:
        """For BOT_API_BASE_FILE_URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/file/bot"

    # ---------------------------------------------------------------- updates in
    def _user(self, user_id: int) -> dict[str, Any]:
        language = self.languages.get(user_id, "en")
        return {"id": user_id, "is_bot": False, "first_name": f"User{user_id}", "language_code": language}

    def _chat(self, chat_id: int) -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": f"User{chat_id}"}
        return {"id": chat_id, "type": "group", "title": f"Group{chat_id}"}

    def _push(self, kind: str, payload: dict[str, Any]) -> int:
        with self._cond:
            if self._holding is not None:  # inside together(): delivered when the block ends
                self._holding.append((kind, payload))
                return -1
            update_id = next(self._update_ids)
            self._updates.append({"update_id": update_id, kind: payload})
            self._cond.notify_all()
            return update_id

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Deliver the updates pushed in the block at once, in one getUpdates answer (as an album often comes)."""
        with self._cond:
            self._holding = []
        try:
            yield
        finally:
            with self._cond:
                held, self._holding = self._holding, None
                for kind, payload in held:
                    self._updates.append({"update_id": next(self._update_ids), kind: payload})
                self._cond.notify_all()

    def _message(self, chat_id: int, user_id: int | None, **content: Any) -> dict[str, Any]:
        return {
            "message_id": next(self._incoming_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": self._user(user_id if user_id is not None else chat_id),
            **content,
        }

    def add_file(self, data: bytes, path: str, file_size: int | None = None) -> str:
        """Make bytes downloadable; returns the file_id."""
        number = next(self._file_ids)
        file_id = f"FILE{number:04d}"
        stored = _StoredFile(data, f"{path}/file_{number}", len(data) if file_size is None else file_size, f"U{number}")
        with self._cond:
            self._files[file_id] = stored
            self._files_by_path[stored.file_path] = stored
        return file_id

    def push_text(self, chat_id: int, text: str, user_id: int | None = None) -> int:
        """A text message; a leading /command gets its bot_command entity like Telegram sends."""
        content: dict[str, Any] = {"text": text}
        command = re.match(r"/\w+(@\w+)?", text)
        if command:
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": command.end()}]
        return self._push("message", self._message(chat_id, user_id, **content))

    def push_photo(
        self,
        chat_id: int,
        data: bytes,
        size: tuple[int, int],
        user_id: int | None = None,
        file_size: int | None = None,
        thumbnails: list[tuple[bytes, tuple[int, int]]] = (),
        caption: str | None = None,
        media_group_id: str | None = None,
    ) -> str:
        """A photo message (returns the original's file_id): Telegram lists sizes smallest first."""
        sizes = []
        for thumb_data, (width, height) in [*thumbnails, (data, size)]:
            claimed = file_size if thumb_data is data else None
            file_id = self.add_file(thumb_data, "photos", claimed)
            stored = self._files[file_id]
            sizes.append(
                {
                    "file_id": file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": width,
                    "height": height,
                    "file_size": stored.file_size,
                }
            )
        extra: dict[str, Any] = {}
        if caption is not None:
            extra["caption"] = caption
        if media_group_id is not None:
            extra["media_group_id"] = media_group_id
        self._push("message", self._message(chat_id, user_id, photo=sizes, **extra))
        return sizes[-1]["file_id"]

    def push_album(
        self, chat_id: int, photos: list[tuple[bytes, tuple[int, int]]], user_id: int | None = None
    ) -> list[str]:
        """A media group of photos, as Telegram sends one: a message per photo sharing a media_group_id."""
        group = f"MG{next(self._media_groups)}"
        with self.together():
            return [self.push_photo(chat_id, data, size, user_id, media_group_id=group) for data, size in photos]

    def push_document(
        self,
        chat_id: int,
        data: bytes,
        file_name: str | None,
        mime_type: str | None,
        user_id: int | None = None,
        file_size: int | None = None,
    ) -> str:
        """A file message (returns its file_id)."""
        file_id = self.add_file(data, "documents", file_size)
        stored = self._files[file_id]
        document: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
        }
        if file_name is not None:
            document["file_name"] = file_name
        if mime_type is not None:
            document["mime_type"] = mime_type
        self._push("message", self._message(chat_id, user_id, document=document))
        return file_id

    def push_message(self, chat_id: int, user_id: int | None = None, **content: Any) -> int:
        """A message of any other kind, e.g. location={...}, contact={...} or dice={...} as the Bot API has it."""
        return self._push("message", self._message(chat_id, user_id, **content))

    def push_video(self, chat_id: int, user_id: int | None = None) -> int:
        """A video message (not a document)."""
        file_id = self.add_file(b"\x00" * 64, "videos")
        video = {"file_id": file_id, "file_unique_id": "V1", "width": 64, "height": 64, "duration": 1}
        return self._push("message", self._message(chat_id, user_id, video=video))

    def push_callback(self, chat_id: int, data: str, message_id: int, user_id: int | None = None) -> int:
        """A press on an inline button of a message the bot sent."""
        sent = self.messages[(chat_id, message_id)]
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": self.bot_user,
            "text": sent.text or "",
        }
        query = {
            "id": f"CQ{next(self._update_ids)}",
            "from": self._user(user_id if user_id is not None else chat_id),
            "chat_instance": f"CI{chat_id}",
            "data": data,
            "message": message,
        }
        return self._push("callback_query", query)

    # ---------------------------------------------------------------- what the bot did
    def calls_of(self, method: str) -> list[ApiCall]:
        """All calls of one method, in order."""
        with self._cond:
            return [call for call in self.calls if call.method == method]

    def transcript(self, chat_id: int, include_deleted: bool = False) -> list[SentMessage]:
        """The bot's messages in a chat, oldest first, as they look now."""
        with self._cond:
            found = [message for (chat, _), message in self.messages.items() if chat == chat_id]
        return [message for message in found if include_deleted or not message.deleted]

    def texts(self, chat_id: int) -> list[str]:
        """The current text of every visible text message the bot sent to a chat."""
        return [message.text for message in self.transcript(chat_id) if message.text is not None]

    def stickers(self, chat_id: int) -> list[SentMessage]:
        """The stickers the bot sent to a chat."""
        return [message for message in self.transcript(chat_id) if message.sticker is not None]

    def callback_answers(self) -> list[str]:
        """The text of every answerCallbackQuery, in order ("" for a silent answer)."""
        return [call.params.get("text", "") for call in self.calls_of("answerCallbackQuery")]

    def documents(self, chat_id: int) -> list[SentMessage]:
        """The documents the bot sent to a chat."""
        return [message for message in self.transcript(chat_id) if message.document is not None]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Poll until predicate() is truthy (returns its value); fails the test with `what` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- the API
    def _ok(self, result: Any) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": result}

    def _error(self, code: int, description: str) -> tuple[int, dict[str, Any]]:
        return code, {"ok": False, "error_code": code, "description": description}

    def _message_json(self, sent: SentMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": self._chat(sent.chat_id),
            "from": self.bot_user,
        }
        if sent.text is not None:
            payload["text"] = sent.text
        if sent.caption is not None:
            payload["caption"] = sent.caption
        if sent.document is not None:
            payload["document"] = {
                "file_id": f"SENT{sent.message_id}",
                "file_unique_id": f"S{sent.message_id}",
                "file_name": sent.document.filename,
                "mime_type": sent.document.content_type or "application/octet-stream",
                "file_size": len(sent.document.data),
            }
        if sent.reply_markup is not None:
            payload["reply_markup"] = sent.reply_markup
        return payload

    def _new_message(self, params: dict[str, Any], **fields: Any) -> SentMessage:
        chat_id = int(params["chat_id"])
        markup = params.get("reply_markup")
        sent = SentMessage(chat_id, next(self._outgoing_ids), reply_markup=json.loads(markup) if markup else None)
        for name, value in fields.items():
            setattr(sent, name, value)
        self.messages[(chat_id, sent.message_id)] = sent
        return sent

    def handle(self, method: str, params: dict[str, Any], files: dict[str, UploadedFile]) -> tuple[int, dict]:
        """Answer one Bot API call (runs on a server thread)."""
        with self._cond:
            self.calls.append(ApiCall(method, params, files))
        if method == "getUpdates":
            return self._ok(self._get_updates(params))
        if method in self.failing_methods:
            return self._error(502, "Bad Gateway")
        with self._cond:
            return self._handle_locked(method, params, files)

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0) or 0)
        limit = int(params.get("limit", 100) or 100)
        wait = min(float(params.get("timeout", 0) or 0), LONG_POLL_WAIT_S)
        with self._cond:
            # Like Telegram: an offset confirms every update below it, which is then gone for good.
            self._updates = [update for update in self._updates if update["update_id"] >= offset]
            if not self._updates and wait > 0:
                self._cond.wait(wait)
                self._updates = [update for update in self._updates if update["update_id"] >= offset]
            return self._updates[:limit]

    def _handle_locked(self, method: str, params: dict[str, Any], files: dict[str, UploadedFile]) -> tuple[int, dict]:
        if method == "getMe":
            return self._ok({**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False})
        if method in ("deleteWebhook", "setMyCommands", "sendChatAction", "answerCallbackQuery"):
            return self._ok(True)
        if method == "getFile":
            stored = self._files.get(params.get("file_id", ""))
            if stored is None:
                return self._error(400, "Bad Request: invalid file_id")
            if stored.file_size > BOT_API_DOWNLOAD_LIMIT:
                return self._error(400, "Bad Request: file is too big")
            file_id = params["file_id"]
            return self._ok(
                {
                    "file_id": file_id,
                    "file_unique_id": stored.file_unique_id,
                    "file_size": stored.file_size,
                    "file_path": stored.file_path,
                }
            )
        if method == "sendMessage":
            sent = self._new_message(params, text=params["text"])
            return self._ok(self._message_json(sent))
        if method == "sendDocument":
            upload = files.get("document")
            if upload is None:
                return self._error(400, "Bad Request: there is no document in the request")
            sent = self._new_message(params, document=upload, caption=params.get("caption"))
            return self._ok(self._message_json(sent))
        if method == "sendSticker":
            upload = files.get("sticker")
            if upload is None:
                return self._error(400, "Bad Request: there is no sticker in the request")
            sent = self._new_message(params, sticker=upload)
            payload = self._message_json(sent)
            payload["sticker"] = {
                "file_id": f"STK{sent.message_id}",
                "file_unique_id": f"K{sent.message_id}",
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
            }
            return self._ok(payload)
        if method == "sendMediaGroup":
            media = json.loads(params["media"])
            if not 2 <= len(media) <= 10:
                return self._error(400, "Bad Request: wrong number of media in the group")
            group = f"SG{next(self._media_groups)}"
            sent_group = []
            for item in media:
                name = item["media"].removeprefix("attach://")
                upload = files.get(name)
                if item.get("type") != "document" or upload is None:
                    return self._error(400, "Bad Request: media not found")
                sent = self._new_message(params, document=upload, caption=item.get("caption"), media_group_id=group)
                sent_group.append(self._message_json(sent))
            return self._ok(sent_group)
        if method == "editMessageText":
            sent = self.messages.get((int(params["chat_id"]), int(params["message_id"])))
            if sent is None or sent.deleted:
                return self._error(400, "Bad Request: message to edit not found")
            if sent.text == params["text"]:
                return self._error(400, "Bad Request: message is not modified")
            sent.edits.append(sent.text or "")
            sent.text = params["text"]
            markup = params.get("reply_markup")
            sent.reply_markup = json.loads(markup) if markup else None
            return self._ok(self._message_json(sent))
        if method == "deleteMessage":
            sent = self.messages.get((int(params["chat_id"]), int(params["message_id"])))
            if sent is None or sent.deleted:
                return self._error(400, "Bad Request: message to delete not found")
            sent.deleted = True
            return self._ok(True)
        self.errors.append(f"unexpected method {method}")
        return self._error(404, "Not Found")

    def download(self, file_path: str) -> bytes | None:
        """The bytes behind a file_path (runs on a server thread)."""
        with self._cond:
            stored = self._files_by_path.get(file_path)
            self.calls.append(ApiCall("download", {"file_path": file_path}))
        return stored.data if stored else None


class _QuietServer(ThreadingHTTPServer):
    """A threading server that does not print a traceback when a client hangs up (as a stopping bot does)."""

    daemon_threads = True
    # The default listen backlog of 5 overflows when a burst of updates makes the bot open many connections
    # at once (20 button taps answered concurrently): the kernel then resets some, and httpx raises ReadError.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore disconnects; report anything else the usual way."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: BotApiStub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from a real server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence: the default logs every request line to stderr."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:
        """File downloads: /file/bot<token>/<file_path>."""
        prefix = f"/file/bot{self.owner.token}/"
        path = unquote(self.path)  # python-telegram-bot percent-encodes the token's colon in file URLs
        if self.owner.file_server_down:
            self.owner.calls.append(ApiCall("download", {"file_path": path[len(prefix) :], "failed": True}))
            self._send_json(*self.owner._error(502, "Bad Gateway"))
            return
        data = self.owner.download(path[len(prefix) :]) if path.startswith(prefix) else None
        if data is None:
            self.owner.errors.append(f"download of an unknown file: {path.replace(self.owner.token, '<token>')}")
            self._send_json(*self.owner._error(404, "Not Found"))
            return
        self._send(200, data, "application/octet-stream")

    def do_POST(self) -> None:
        """Bot API methods: /bot<token>/<method>."""
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        match = re.fullmatch(r"/bot([^/]+)/(\w+)", unquote(self.path))
        if not match:
            self._send_json(*self.owner._error(404, "Not Found"))
            return
        if match.group(1) != self.owner.token:
            self._send_json(*self.owner._error(401, "Unauthorized"))
            return
        try:
            params, files = _parse_body(self.headers.get("Content-Type", ""), body)
            status, payload = self.owner.handle(match.group(2), params, files)
        except Exception as error:  # a stub bug or an unexpected request: make it visible to the test
            self.owner.errors.append(f"{match.group(2)}: {error!r}")
            status, payload = self.owner._error(500, f"stub error: {error!r}")
        self._send_json(status, payload)


def _parse_body(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    """Form, JSON or multipart parameters (python-telegram-bot sends forms, and multipart with files)."""
    if not body:
        return {}, {}
    if content_type.startswith("application/json"):
        return json.loads(body), {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode(), keep_blank_values=True)), {}
    if content_type.startswith("multipart/form-data"):
        parser = email.parser.BytesParser(policy=email.policy.HTTP)
        message = parser.parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        params: dict[str, Any] = {}
        files: dict[str, UploadedFile] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            if filename is not None:
                files[name] = UploadedFile(filename, part.get_content_type(), payload)
            else:
                params[name] = payload.decode()
        return params, files
    raise ValueError(f"unsupported content type {content_type!r}")
