"""Sites: where an activation lives.

A site is data, so a sweep is a loop over sites::

    >>> import spatial_interp as si
    >>> [str(s) for s in (si.site.vision_block(0), si.site.vision_out, si.site.lm_resid(3).last_token)]
    ['vision_block.0', 'vision_out', 'lm_resid.3.last_token']
    >>> si.site.parse("lm_resid.3") == si.site.lm_resid(3)
    True

``lm_resid(0)`` is the input of decoder layer 0 after the image splice; ``lm_resid(s)`` for
``s >= 1`` is the output of decoder layer ``s - 1`` (TransformerLens's ``blocks.0.hook_resid_pre``
and ``blocks.{s-1}.hook_resid_post``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

SiteKind = Literal["vision_block", "vision_out", "lm_resid"]


class SiteError(ValueError):
    """A site that does not exist (unknown kind, or an index outside the model's depth)."""


@dataclass(frozen=True)
class Site:
    """One activation site; ``last_token`` restricts an LM site to the final position."""

    kind: SiteKind
    index: int | None = None
    only_last_token: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("vision_block", "vision_out", "lm_resid"):
            raise SiteError(f"unknown site kind {self.kind!r}; use vision_block, vision_out or lm_resid")
        if self.index is not None:
            # A float (3.0, 2.5), bool or string index would address a different (or no) layer after an
            # implicit conversion, so only true integers are accepted (numpy and 0-d torch integers become int).
            try:
                index = None if isinstance(self.index, bool) else operator.index(self.index)
            except TypeError:
                index = None
            if index is None:
                raise TypeError(f"{self.kind} index must be an int, got {self.index!r} "
                                f"({type(self.index).__name__}); e.g. {self.kind}(3), or parse a string "
                                f"with si.site.parse('{self.kind}.3')")
            object.__setattr__(self, "index", index)
        if (self.kind == "vision_out") != (self.index is None):
            raise SiteError(f"{self.kind} {'takes no' if self.kind == 'vision_out' else 'needs an'} index")
        if self.index is not None and self.index < 0:
            raise SiteError(f"site index must be >= 0, got {self.index}")
        if self.only_last_token and self.kind != "lm_resid":
            raise SiteError("last_token applies to lm_resid sites only")

    @property
    def last_token(self) -> Site:
        """The same LM site restricted to the final sequence position."""
        return replace(self, only_last_token=True)

    @property
    def is_vision(self) -> bool:
        return self.kind != "lm_resid"

    def __str__(self) -> str:
        text = self.kind if self.index is None else f"{self.kind}.{self.index}"
        return text + (".last_token" if self.only_last_token else "")


def vision_block(k: int) -> Site:
    """Output of vision-encoder block ``k`` (rows in the encoder's own token order)."""
    return Site("vision_block", k)


vision_out = Site("vision_out")
"""The vision embeddings spliced into the LM, one row per cell in row-major order."""


def lm_resid(s: int) -> Site:
    """LM residual stream slot ``s`` (0 = decoder-layer-0 input, ``s`` = output of layer ``s-1``)."""
    return Site("lm_resid", s)


def parse(text: str) -> Site:
    """Parse ``"vision_block.3"``, ``"vision_out"``, ``"lm_resid.5"`` or ``"lm_resid.5.last_token"``."""
    if not isinstance(text, str):
        raise TypeError(f"site.parse() takes a string such as 'lm_resid.3', got {type(text).__name__}")
    parts = text.strip().split(".")
    last = parts[-1] == "last_token"
    if last:
        parts = parts[:-1]
    try:
        if parts == ["vision_out"]:
            site = vision_out
        elif len(parts) == 2 and parts[0] in ("vision_block", "lm_resid"):
            site = Site(parts[0], int(parts[1]))  # type: ignore[arg-type]
        else:
            raise ValueError
    except SiteError as error:
        raise SiteError(f"site {text!r}: {error}") from None
    except ValueError:
        raise SiteError(
            f"cannot parse site {text!r}; expected vision_block.K, vision_out, lm_resid.S "
            "or lm_resid.S.last_token"
        ) from None
    return site.last_token if last else site


def resolve(site: Site | str) -> Site:
    """``site`` as a :class:`Site`: a Site is returned as is, a string goes through :func:`parse`.

    The one place every public primitive (collect, patch, sweep, steer, ablate) turns its ``site``
    argument into a Site, so they all accept the same forms. Anything else is a TypeError.

    >>> resolve("lm_resid.2.last_token") == lm_resid(2).last_token
    True
    """
    if isinstance(site, Site):
        return site
    if isinstance(site, str):
        return parse(site)
    raise TypeError(f"a site must be a Site (e.g. si.site.lm_resid(3), si.site.vision_out) or its string form "
                    f"('lm_resid.3', 'vision_out'), got {site!r} ({type(site).__name__})")


def resolve_all(sites: Iterable[Site | str]) -> list[Site]:
    """:func:`resolve` of each site (a single Site or string is refused: pass a list)."""
    if isinstance(sites, (Site, str)):
        raise TypeError(f"expected a list of sites, got the single site {sites!r}; wrap it in a list")
    return [resolve(s) for s in sites]
