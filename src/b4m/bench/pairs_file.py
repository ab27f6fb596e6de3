"""``b4m bench --pairs-file``: your own content and style folders, their pairs and the evaluation prompts.

A pairs file (YAML or TOML; paths relative to the file) names each concept once and the pairs to run::

    base: stabilityai/stable-diffusion-xl-base-1.0   # optional: --base wins
    contents:
      teddy:
        images: refs/teddy                 # 3-5 photos of the subject
        prompt: a photo of a snq teddy     # training prompt (default: each image's .txt caption)
        token: snq teddy                   # fills {content} in the evaluation prompts
        class: teddy bear                  # fills {content} in the text scored by CLIP (default: token)
        aux: [refs/aux/stripes, refs/aux/dots, refs/aux/ink]   # B4M's MCP: other styles, captioned
    styles:
      papercut:
        images: refs/papercut
        prompt: a cup in wzk papercut style
        token: wzk papercut
        class: papercut
        aux: [refs/aux/car, refs/aux/house, refs/aux/fish]     # B4M's MCP: other contents, captioned
    pairs: {cross: true}                   # every content x every style; or a list: [teddy:papercut, ...]
    prompts:                               # the same for every pair and method
      - a {content} in {style} style
      - a {content} in {style} style riding a bicycle

Generation uses the prompts with ``{content}``/``{style}`` replaced by the concepts' ``token``; prompt alignment
(CLIP text-image cosine) scores the same prompt with each concept's ``class`` words instead, so a made-up
identifier never counts for or against a method (as in ProSpect's and ZipLoRA's protocol that the B4M paper
follows). Every problem in the file is reported at once, one line, naming the file and the key, before any
model loads.
"""

from __future__ import annotations

import dataclasses
import re
import string
from pathlib import Path
from typing import Any

from b4m.errors import B4MError

__all__ = ["Concept", "PairsFile", "load_pairs_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONCEPT_KEYS = ("images", "prompt", "token", "class", "aux")
_TOP_KEYS = ("base", "contents", "styles", "pairs", "prompts")
PLACEHOLDERS = ("content", "style")


@dataclasses.dataclass(frozen=True)
class Concept:
    """One content or style of a pairs file."""

    kind: str  # "content" | "style"
    name: str
    images: Path
    prompt: str | None
    token: str
    words: str
    aux: tuple[Path, ...]


@dataclasses.dataclass(frozen=True)
class PairsFile:
    """A validated pairs file (:func:`load_pairs_file`)."""

    path: Path
    base: str | None
    contents: dict[str, Concept]
    styles: dict[str, Concept]
    pairs: tuple[tuple[str, str], ...]
    prompts: tuple[str, ...]

    def concepts(self, pair: str) -> tuple[Concept, Concept]:
        content, _, style = pair.partition(":")
        return self.contents[content], self.styles[style]

    def generation_prompts(self, pair: str) -> list[str]:
        """The prompts images are generated with: placeholders filled with the concepts' tokens."""
        c, s = self.concepts(pair)
        return [p.format(content=c.token, style=s.token) for p in self.prompts]

    def scoring_prompts(self, pair: str) -> list[str]:
        """The texts prompt alignment scores against: placeholders filled with the concepts' class words."""
        c, s = self.concepts(pair)
        return [p.format(content=c.words, style=s.words) for p in self.prompts]

    def data(self, pair: str) -> dict[str, Any]:
        """The pair's inputs, in the form the bench's fits read (as the world's exporter returns them)."""
        c, s = self.concepts(pair)
        return {
            "content": c.images,
            "content_prompt": c.prompt,
            "style": s.images,
            "style_prompt": s.prompt,
            "aux_styles": list(c.aux),
            "aux_contents": list(s.aux),
        }

    def fingerprint(self, pair: str) -> str:
        """A hash of the pair's data (image bytes and the prompts they train with): part of every run's cache key,
        so changed references are recomputed, while the same images in a moved folder are reused."""
        from b4m.methods.cache import image_sets
        from b4m.train.identity import data_fingerprint

        c, s = self.concepts(pair)
        sets = image_sets([c.images, s.images], [c.prompt, s.prompt], "--pairs-file")
        aux = [*c.aux, *s.aux]
        sets += image_sets(aux, [None] * len(aux), "--pairs-file")
        return data_fingerprint(sets)


def _read(path: Path) -> dict[str, Any]:
    import json
    import tomllib

    import yaml

    if not path.is_file():
        raise B4MError(
            f"--pairs-file {path}: no such file; write a YAML or TOML pairs file (README, examples/)"
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise B4MError(f"--pairs-file {path}: use a .yaml, .yml, .toml or .json file")
    except UnicodeDecodeError:
        raise B4MError(f"--pairs-file {path}: not UTF-8 text") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise B4MError(f"--pairs-file {path}: cannot parse it ({first})") from None
    if not isinstance(data, dict):
        raise B4MError(f"{path}: the file must be a mapping with contents, styles, pairs and prompts")
    return data


def _text(value: Any, key: str, problems: list[str], required: bool = False) -> str | None:
    if value is None:
        if required:
            problems.append(f"{key}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key}: expected a non-empty string, got {value!r}")
        return None
    return value.strip()


def _folder(value: Any, here: Path, key: str, problems: list[str], captions: bool) -> Path | None:
    from b4m.data.folders import read_image_folder

    text = _text(value, key, problems, required=True)
    if text is None:
        return None
    folder = (here / Path(text).expanduser()).resolve()
    try:
        images = read_image_folder(folder, key)
        if captions:  # every image needs its .txt caption (no prompt option for auxiliary folders)
            images.prompts(None, key)
    except B4MError as err:
        problems.append(str(err))
        return None
    return folder


def _concepts(data: dict[str, Any], kind: str, here: Path, f: str, problems: list[str]) -> dict[str, Concept]:
    key = f"{kind}s"
    section = data.get(key)
    if not isinstance(section, dict) or not section:
        problems.append(f"{f}: {key}: give a mapping of names to concepts (images, token, ...)")
        return {}
    out = {}
    for name, entry in section.items():
        where = f"{f}: {key}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: a name is letters, digits, '_', '-' or '.' (it names folders)")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with images, token, prompt, class, aux")
            continue
        unknown = sorted(set(map(str, entry)) - set(_CONCEPT_KEYS))
        if unknown:
            problems.append(f"{where}.{unknown[0]}: unknown key (known: {', '.join(_CONCEPT_KEYS)})")
        images = _folder(entry.get("images"), here, f"{where}.images", problems, captions=False)
        prompt = _text(entry.get("prompt"), f"{where}.prompt", problems)
        if images is not None and prompt is None:
            from b4m.data.folders import read_image_folder

            try:
                read_image_folder(images).prompts(None, f"{where}.images")
            except B4MError as err:
                problems.append(f"{err} (or give {where.split(': ', 1)[1]}.prompt)")
        token = _text(entry.get("token"), f"{where}.token", problems, required=True)
        words = _text(entry.get("class"), f"{where}.class", problems) or token
        aux_value = entry.get("aux") or []
        if isinstance(aux_value, str):
            aux_value = [aux_value]
        if not isinstance(aux_value, list):
            problems.append(f"{where}.aux: expected a list of folders")
            aux_value = []
        aux = [
            _folder(a, here, f"{where}.aux[{i}]", problems, captions=True) for i, a in enumerate(aux_value)
        ]
        if images is not None and token is not None and all(a is not None for a in aux):
            out[name] = Concept(kind, name, images, prompt, token, words or token, tuple(aux))  # type: ignore[arg-type]
    return out


def _pairs(
    data: dict[str, Any], contents: dict, styles: dict, f: str, problems: list[str]
) -> list[tuple[str, str]]:
    value = data.get("pairs", {"cross": True})
    if value == "cross" or (isinstance(value, dict) and value.get("cross") is True and len(value) == 1):
        return [(c, s) for c in contents for s in styles]
    if not isinstance(value, list) or not value:
        problems.append(f"{f}: pairs: write {{cross: true}} or a list such as [teddy:papercut, cat:knit]")
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, list | tuple) and len(item) == 2:
            c, s = map(str, item)
        elif isinstance(item, str) and item.count(":") == 1:
            c, s = (x.strip() for x in item.split(":"))
        else:
            problems.append(f"{f}: pairs[{i}]: write content:style, e.g. teddy:papercut")
            continue
        if c not in contents or s not in styles:
            bad = f"content {c!r}" if c not in contents else f"style {s!r}"
            problems.append(f"{f}: pairs[{i}] {c}:{s}: no {bad} in the file")
            continue
        out.append((c, s))
    if len(set(out)) != len(out):
        problems.append(f"{f}: pairs: a pair is listed twice")
    return list(dict.fromkeys(out))


def _prompts(data: dict[str, Any], f: str, problems: list[str]) -> list[str]:
    value = data.get("prompts")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        problems.append(f"{f}: prompts: give a list of prompts with {{content}} and {{style}}")
        return []
    out = []
    for i, prompt in enumerate(value):
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{f}: prompts[{i}]: expected a non-empty string")
            continue
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None]
        except ValueError as err:
            problems.append(
                f"{f}: prompts[{i}]: {err} (write {{content}} and {{style}}; a literal brace is {{{{)"
            )
            continue
        unknown = [name for name in fields if name not in PLACEHOLDERS]
        if unknown:
            problems.append(
                f"{f}: prompts[{i}]: unknown placeholder {{{unknown[0]}}} (known: {{content}}, {{style}})"
            )
        elif not set(PLACEHOLDERS) <= set(fields):
            problems.append(
                f"{f}: prompts[{i}]: name both {{content}} and {{style}} (e.g. 'a {{content}} in {{style}} style')"
            )
        else:
            out.append(prompt.strip())
    return out


def load_pairs_file(path: str | Path, need_aux: bool = False) -> PairsFile:
    """Read and check a pairs file (module docstring); ``need_aux``: a chosen method needs B4M's auxiliary sets,
    so every concept in a pair must list ``aux`` folders. Raises one :class:`~b4m.errors.B4MError` naming every
    problem with its key."""
    path = Path(path)
    data = _read(path)
    here, f = path.resolve().parent, str(path)
    problems: list[str] = []
    unknown = sorted(set(map(str, data)) - set(_TOP_KEYS))
    if unknown:
        problems.append(f"{f}: {unknown[0]}: unknown key (known: {', '.join(_TOP_KEYS)})")
    base = _text(data.get("base"), f"{f}: base", problems)
    contents = _concepts(data, "content", here, f, problems)
    styles = _concepts(data, "style", here, f, problems)
    pairs = _pairs(data, contents, styles, f, problems) if contents and styles else []
    prompts = _prompts(data, f, problems)
    if need_aux:
        used = {("contents", c) for c, _ in pairs} | {("styles", s) for _, s in pairs}
        for section, name in sorted(used):
            concept = (contents if section == "contents" else styles)[name]
            if not concept.aux:
                other = "styles" if section == "contents" else "contents"
                problems.append(
                    f"{f}: {section}.{name}.aux: B4M's multi-correspondence training (MCP) needs a few folders of "
                    f"other {other}, each with captioned images"
                )
    if problems:
        raise B4MError("; ".join(problems))
    return PairsFile(path, base, contents, styles, tuple(pairs), tuple(prompts))


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1 or Path(value).exists()


def check_bench_options(
    cfg: Any, methods: list[str], sizes: dict[str, Any], problems: list[str]
) -> tuple[Any, str]:
    """The ``--pairs-file`` side of :func:`b4m.bench.catalogue.plan`: the file, the base model, the encoders and
    the sizes that differ from the built-in bench (``sizes`` is updated: training steps default to each method's
    preset for the base, the reference counts do not apply). Appends problems; returns ``(PairsFile or None,
    base)``."""
    from b4m.checks import check_base, integer_at_least
    from b4m.methods.catalogue import CATALOGUE

    for key in ("steps", "stage2_steps", "merge_steps", "sample_steps", "n_content", "n_style"):
        if getattr(cfg, key) is None and not cfg.quick:
            sizes[key] = None
    sizes["n_content"] = sizes["n_style"] = None  # the folders hold what they hold
    if cfg.pairs:
        problems.append("--pairs: with --pairs-file the pairs come from the file (its pairs: key)")
    if getattr(cfg, "suite", None):
        problems.append(
            f"--suite {cfg.suite}: a built-in world suite; with --pairs-file the pairs come from the file"
        )
    need_aux = any("aux_sets" in CATALOGUE[m].needs for m in methods if m in CATALOGUE)
    try:
        source = load_pairs_file(cfg.pairs_file, need_aux=need_aux)
    except B4MError as err:
        problems.append(str(err))
        source = None
    base = cfg.base or (source.base if source is not None else None)
    if base is None:
        if source is not None:
            problems.append(
                f"--base: give the base model (a diffusers folder or hub id), or base: in {cfg.pairs_file}"
            )
        base = "builtin"
    else:
        check_base(base, problems)
    if not cfg.dry_run:
        for option in ("dino", "clip"):
            if getattr(cfg, option) is None:
                problems.append(
                    f"--{option}: give the {'content' if option == 'dino' else 'style and prompt'} "
                    "encoder (a local folder or a hub id) for --pairs-file"
                )
    for option in ("dino", "clip"):
        value = getattr(cfg, option)
        if value is not None and _looks_local(value) and not Path(value).expanduser().is_dir():
            problems.append(f"--{option} {value}: no such folder; give a model folder or a hub id")
    if cfg.csd is not None:
        from b4m.eval.csd import _weights_file

        try:
            _weights_file(Path(cfg.csd).expanduser(), "--csd")
        except B4MError as err:
            problems.append(str(err))
    integer_at_least(cfg.resolution, "--resolution", 8, problems)
    integer_at_least(cfg.rank, "--rank", 1, problems)
    if cfg.resolution is not None and cfg.resolution % 8:
        problems.append(f"--resolution {cfg.resolution}: give a multiple of 8 (the VAE's factor)")
    from b4m.bench.costs import parse_costs

    parse_costs(cfg.gpu_costs, problems)
    return source, str(base)


def common_spec(p: Any, pair: str) -> dict[str, Any]:
    """What every run of ``pair`` shares in its cache key: the base model, the data's fingerprint (not its
    folders: a moved copy resumes), the resolution, the encoders, and the prompt set x seeds at equal noise."""
    from b4m.bench.runs import BENCH_VERSION

    source: PairsFile = p.source
    prompts = source.generation_prompts(pair)
    return {
        "version": BENCH_VERSION,
        "track": "pairs-file",
        "base": p.base,
        "pair": pair,
        "data": source.fingerprint(pair),
        "seed": p.cfg.seed,
        "resolution": p.cfg.resolution,
        "rank": p.cfg.rank,
        "encoders": {"dino": p.cfg.dino, "clip": p.cfg.clip, "csd": p.cfg.csd},
        "sample": {"seeds": p.sizes["seeds"], "steps": p.sizes["sample_steps"], "prompts": prompts,
                   "attributes": [{} for _ in prompts], "score_prompts": source.scoring_prompts(pair)},
    }  # fmt: skip
