"""Read a YAML file into plain Python values while remembering where each value stood.

Configuration errors must name the file, the line and the key ("banks/submission.yaml:12:
unknown key 'spam_kil_level'"), so the loader keeps a map from the path of every value
(a tuple of mapping keys and list indexes) to its 1-based line number.

Uses PyYAML's C loader when present (about 8x faster than the pure-Python one).
Fails with `YamlError` (file and line) on syntax errors and on duplicate mapping keys,
which PyYAML would otherwise resolve silently by keeping the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(Exception):
    def __init__(self, file: str, line: int, message: str):
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclass
class Source:
    """A parsed YAML document: `data` plus the line of every path inside it."""

    file: str
    data: object
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, path: tuple) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def load_file(path: str) -> Source:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return load_text(text, path)


def load_text(text: str, file: str = "<string>") -> Source:
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            raise YamlError(file, line, f"YAML syntax error: {exc.problem or exc}") from None
        except yaml.YAMLError as exc:
            raise YamlError(file, 1, f"YAML error: {exc}") from None
        src = Source(file, None)
        if node is None:
            src.lines[()] = 1
            return src
        src.data = _convert(loader, node, (), src)
        return src
    finally:
        loader.dispose()


def _convert(loader, node, path: tuple, src: Source):
    src.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(src.file, key_node.start_mark.line + 1, "mapping keys must be plain values")
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise YamlError(src.file, key_node.start_mark.line + 1,
                                f"duplicate key {key!r} (first at line {src.lines[path + (key,)]})")
            src.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _convert(loader, value_node, path + (key,), src)
            # the key's own line is what an error about the key should show
            src.lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, path + (i,), src) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
