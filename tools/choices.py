"""Who speaks, and in which voice: the dropdown options, and the id behind what a builder typed or a model
said (an id or a name, in any case).

Every video tool takes the avatar twice, and the voice too: as a string (``avatar``, ``voice``) that a model
fills, a builder types or a workflow variable carries, and as a dropdown (``avatar_choice``,
``voice_choice``, ``form: form``) for the builder. Only strings go to models (Dify sends a dynamic-select's
type name as the JSON Schema type, which function calling refuses), and the dropdown stays empty on
Dify 1.6-1.14 and for editors, so the string is what always works; the dropdown is the builder's default
and the string wins over it.

Avatars and voices belong to the bridge API key, i.e. the Dify workspace, never to one Dify user: the
options fetched for the console user are the ones every end user of a published app can use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from dify_plugin.entities.parameters import I18nObject, ParameterOption

from tools.bridge_client import BridgeClient, BridgeError

AVATAR_CHOICE = "avatar_choice"
VOICE_CHOICE = "voice_choice"
NAMED_IN_ERRORS = 8
"""How many avatars an error names, so that a model can pick the right one without another call."""

Item = dict[str, Any]


def parameter_options(client: BridgeClient, parameter: str) -> list[ParameterOption]:
    """The dropdowns: the workspace's ready avatars, or the bridge's voices."""
    if parameter == AVATAR_CHOICE:
        return [ParameterOption(value=a["id"], label=I18nObject(en_US=avatar_label(a)))
                for a in client.avatars() if a.get("status") == "ready"]
    if parameter == VOICE_CHOICE:
        return [ParameterOption(value=v["id"], label=I18nObject(en_US=voice_label(v))) for v in client.voices()]
    return []


def avatar_label(avatar: Item) -> str:
    return f"{avatar['name']} ({avatar.get('kind') or 'avatar'}, id {avatar['id']})"


def voice_label(voice: Item) -> str:
    return f"{voice['name']} · {', '.join(voice['languages'][:2])} · {voice['backend']}"


def wanted(typed: Any, chosen: Any) -> str:
    """What the caller asked for: the string parameter when it is set, else the dropdown's choice."""
    return str(typed or "").strip() or str(chosen or "").strip()


def avatar_id(client: BridgeClient, asked: str) -> str | None:
    """The id of the ready avatar ``asked`` names by id or name; None (the bridge's default) when empty."""
    if not asked:
        return None
    avatars = client.avatars()
    found = _find(asked, avatars, "avatar", prefer=lambda a: a.get("status") == "ready")
    if found is None:
        ready = [a for a in avatars if a.get("status") == "ready"]
        named = ", ".join(f"{a['name']} (id {a['id']})" for a in ready[:NAMED_IN_ERRORS])
        more = f" and {len(ready) - NAMED_IN_ERRORS} more" if len(ready) > NAMED_IN_ERRORS else ""
        raise BridgeError(f"There is no avatar {asked[:64]!r} in this workspace, by id or by name. "
                          + (f"Ready avatars: {named}{more}." if ready else "It has no ready avatar yet."))
    if found.get("status") == "failed":
        raise BridgeError(f"Avatar {found['name']!r} (id {found['id']}) could not be made: "
                          f"{found.get('error') or 'unknown error'}. Create it again from another video or photo")
    if found.get("status") != "ready":
        raise BridgeError(f"Avatar {found['name']!r} (id {found['id']}) is still being prepared; use it once "
                          "list_avatars shows it as ready")
    return str(found["id"])


def voice_id(client: BridgeClient, asked: str) -> str | None:
    """The id of the voice ``asked`` names by id or name; None (chosen from the language) when empty."""
    if not asked:
        return None
    found = _find(asked, client.voices(), "voice")
    if found is None:
        raise BridgeError(f"There is no voice {asked[:64]!r}, by id or by name. list_voices lists the voices "
                          "(give it a language, e.g. en or zh, for a short list)")
    return str(found["id"])


def voices_for(voices: Sequence[Item], language: str) -> list[Item]:
    """The voices that speak ``language``: a code (``en``, ``pt-br``, ``zh_CN``) or a name (``English``)."""
    code = language.strip().casefold().replace("_", "-")
    if not code:
        return list(voices)
    word = re.compile(rf"\b{re.escape(code)}\b", re.IGNORECASE)

    def speaks(voice: Item) -> bool:
        codes = [str(c).casefold() for c in voice.get("languages") or []]
        return (any(c == code or c.startswith(code + "-") or code.startswith(c + "-") for c in codes)
                or bool(word.search(str(voice.get("name") or ""))))

    return [v for v in voices if speaks(v)]


def _find(asked: str, items: Sequence[Item], what: str, prefer: Callable[[Item], bool] | None = None) -> Item | None:
    """The item whose id is ``asked``; else the one whose id or name is ``asked`` ignoring case (when several
    are, the one ``prefer`` picks); an error when that still leaves several."""
    exact = [i for i in items if i["id"] == asked]
    if exact:
        return exact[0]
    folded = asked.casefold()
    hits = [i for i in items if folded in {str(i["id"]).casefold(), str(i.get("name") or "").strip().casefold()}]
    if len(hits) > 1 and prefer is not None:
        hits = [i for i in hits if prefer(i)] or hits
    if len(hits) > 1:
        listed = ", ".join(f"{i.get('name')} (id {i['id']})" for i in hits[:NAMED_IN_ERRORS])
        raise BridgeError(f"{asked[:64]!r} could be {len(hits)} different {what}s: {listed}. Give the id instead")
    return hits[0] if hits else None
