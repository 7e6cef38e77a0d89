"""The annotation page and its HTTP API, on the standard library's server.

A local, single-user tool: `http.server.ThreadingHTTPServer`, one thread per
request, bound to 127.0.0.1 unless told otherwise. The page (`static/`: one
HTML file, one JavaScript module, one stylesheet; no build step, nothing
fetched from the network) talks to the API below, which is a thin layer
over `store.AnnotationFolder` and `prefill.Prefill`.

    GET  /api/status                  {"folder", "frames", "model", "state", "problem"}
    GET  /api/frames                  [{"name", "width", "height", "saved"}]
    GET  /api/frames/NAME/image       PNG of the angiogram (8-bit)
    GET  /api/frames/NAME/mask        PNG 0/255: the saved mask, else the model's, else empty
                                      (header X-Mask-Source: saved, model or empty)
    PUT  /api/frames/NAME/mask        PNG body (0/255 or 0/1, the frame's size); header
                                      X-Annotation-Seconds: the time spent, logged

Errors answer JSON `{"error": message}`: 400 for a malformed name, a body
that is not a PNG or not the frame's size; 404 for an unknown frame or
path; 403 for a request whose Host is not this server (a web page cannot
reach the tool through DNS rebinding).
"""

import http.server
import ipaddress
import json
import math
import socket
import sys
import threading
import traceback
import urllib.parse
from pathlib import Path

import numpy as np

from cm_unet_keras.annotate.prefill import Prefill
from cm_unet_keras.annotate.store import AnnotationFolder, MaskError, UnknownFrameError, decode_mask_png, png_size
from cm_unet_keras.core.errors import InvalidInputError

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/static/annotate.js": ("annotate.js", "text/javascript; charset=utf-8"),
         "/static/annotate.css": ("annotate.css", "text/css; charset=utf-8")}
# A mask PNG of a 4096 x 4096 frame is well under this.
MAX_BODY = 64 * 1024 * 1024


class AnnotationServer(http.server.ThreadingHTTPServer):
    """The server of one folder: `folder` (`AnnotationFolder`) and `prefill`
    (`Prefill`) answer the requests. `port` 0 picks a free port
    (`server_address` then holds it)."""

    daemon_threads = True

    def __init__(self, folder, prefill, host="127.0.0.1", port=0):
        self.folder, self.prefill = folder, prefill
        if ":" in host:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__((host, port), AnnotationHandler)
        self.loopback = ipaddress.ip_address(self.server_address[0]).is_loopback

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def allowed_host(self, header):
        """Whether a request's Host header names this server. On loopback
        only the loopback names pass: a page elsewhere whose name resolves
        to 127.0.0.1 still sends its own name."""
        if not self.loopback:
            return True
        port = self.server_address[1]
        return header in {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}


class AnnotationHandler(http.server.BaseHTTPRequestHandler):
    server_version = "cm-unet-annotate"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # the terminal shows what matters: errors and saves
        pass

    def do_GET(self):
        self._answer(self._get)

    def do_PUT(self):
        self._answer(self._put)

    def _answer(self, route):
        try:
            if not self.server.allowed_host(self.headers.get("Host", "")):
                raise _HttpError(403, "unexpected Host header: open the address `cm-unet annotate` printed")
            route(_segments(self.path))
        except _HttpError as error:
            self._send_json({"error": error.message}, error.status)
        except MaskError as error:
            self._send_json({"error": str(error)}, 400)
        except UnknownFrameError as error:
            self._send_json({"error": error.args[0]}, 404)
        except InvalidInputError as error:  # a file in the folder that cannot be read
            self._send_json({"error": str(error)}, 422)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
        except Exception as error:  # a bug: the page says so, the terminal shows where
            traceback.print_exc()
            self._send_json({"error": f"internal error: {error!r}"}, 500)

    def _get(self, parts):
        path = "/" + "/".join(parts)
        if path in PAGES:
            name, kind = PAGES[path]
            return self._send((STATIC / name).read_bytes(), kind)
        if parts == ["api", "status"]:
            return self._send_json({"folder": str(self.server.folder.folder), "frames": len(self.server.folder.frames),
                                    **self.server.prefill.status()})
        if parts == ["api", "frames"]:
            return self._send_json(self.server.folder.listing())
        if len(parts) == 4 and parts[:2] == ["api", "frames"] and parts[3] in ("image", "mask"):
            name = parts[2]
            if parts[3] == "image":
                return self._send(image_png(self.server.folder, name), "image/png")
            vessel_mask, source = mask_of(self.server.folder, self.server.prefill, name)
            return self._send(_png(vessel_mask * np.uint8(255)), "image/png", {"X-Mask-Source": source})
        raise _HttpError(404, f"no page {self.path}")

    def _put(self, parts):
        if not (len(parts) == 4 and parts[:2] == ["api", "frames"] and parts[3] == "mask"):
            raise _HttpError(404, f"no mask to PUT at {self.path}")
        folder, name = self.server.folder, parts[2]
        shape = folder.size(name)  # the name first: a bad one is told before the body is read
        vessel_mask = decode_mask_png(self._body(), shape, name)
        model_mask = self.server.prefill.mask(name) if self.server.prefill.state == "ready" else None
        row = folder.save_mask(name, vessel_mask, seconds=_seconds(self.headers.get("X-Annotation-Seconds")),
                               model_mask=model_mask)
        print(f"saved {folder.frames[name].mask_path.name}: {row['pixels_changed']} pixels changed, "
              f"{row['seconds'] or '?'} s", file=sys.stderr, flush=True)
        self._send_json({"saved": True, **row})

    def _body(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _HttpError(411, "send the PNG with a Content-Length")
        if int(length) > MAX_BODY:
            raise _HttpError(413, f"a mask PNG of {length} bytes is larger than {MAX_BODY} bytes")
        return self.rfile.read(int(length))

    def _send(self, body, kind, headers=None, status=200):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # masks change; a stale one would be saved back
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, value, status=200):
        headers = None
        if status >= 400:  # a body left unread must not be taken for the next request
            self.close_connection, headers = True, {"Connection": "close"}
        self._send(json.dumps(value).encode(), "application/json", headers, status)


class _HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def _segments(raw_path):
    """The decoded segments of a request path: `/api/frames/a%2Fb/mask` is
    ["api", "frames", "a/b", "mask"] (then refused as a name, not a folder)."""
    path = urllib.parse.urlsplit(raw_path).path
    return [urllib.parse.unquote(part) for part in path.split("/") if part]


def _seconds(header):
    try:
        seconds = float(header)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _png(pixels):
    import cv2

    return cv2.imencode(".png", pixels)[1].tobytes()


def image_png(folder, name):
    """The frame's angiogram as an 8-bit PNG: an 8-bit PNG file as it is,
    anything else (16-bit, TIFF, DICOM) scaled to 0..255 as `predict`'s
    overlays are."""
    path = folder.frame(name).image_path
    if png_size(path) is not None:
        data = path.read_bytes()
        if data[24] == 8:  # IHDR bit depth
            return data
    from cm_unet_keras.data.readers import read_angiogram
    from cm_unet_keras.inference.predict import to_uint8

    return _png(to_uint8(read_angiogram(path)))


def mask_of(folder, prefill, name):
    """(0/1 mask, source) a frame opens with: its saved mask ("saved"), else
    the model's ("model"), else an empty one ("empty")."""
    saved = folder.saved_mask(name)
    if saved is not None:
        return saved, "saved"
    predicted = prefill.mask(name)
    if predicted is not None:
        return predicted, "model"
    return np.zeros(folder.size(name), np.uint8), "empty"


def start(folder, model=None, host="127.0.0.1", port=0, log=print):
    """Serve `folder` on a thread; returns the `AnnotationServer` (its `url`;
    `shutdown()` then `server_close()` stop it)."""
    folder = folder if isinstance(folder, AnnotationFolder) else AnnotationFolder(folder)
    server = AnnotationServer(folder, Prefill(folder, model, log=log), host, port)
    threading.Thread(target=server.serve_forever, name="annotate-server", daemon=True).start()
    return server
