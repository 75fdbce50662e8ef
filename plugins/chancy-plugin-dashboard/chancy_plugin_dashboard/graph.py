"""A workflow's steps as an inline SVG graph (no JavaScript, no inline styles).

Steps are laid out in columns by depth (a step is one column right of its deepest
dependency), each node coloured by its state (the stylesheet's ``.node.<state>``) and
linking to its job's page once the step has a job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup

__all__ = ["MAX_GRAPH_STEPS", "GraphStep", "layers", "step_graph"]

MAX_GRAPH_STEPS = 300
"""Workflows with more steps get only the table (a graph that big says nothing)."""

_NODE_W, _NODE_H = 168, 36
_GAP_X, _GAP_Y = 56, 12
_PAD = 8
_LABEL_CHARS = 22


@dataclass(frozen=True)
class GraphStep:
    """What the graph needs of a step."""

    name: str
    state: str
    depends_on: tuple[str, ...]
    job_id: str | None


def layers(steps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The steps by depth: ``steps`` maps a step to its dependencies; each layer's steps
    are ordered by where their dependencies are (fewer crossings), then by name.

    A dependency that is not a step is ignored; steps on a cycle (a workflow never has
    one) go in the first layer."""
    depth: dict[str, int] = {}
    remaining = {
        name: [d for d in deps if d in steps and d != name] for name, deps in steps.items()
    }
    while remaining:
        ready = [n for n, deps in remaining.items() if all(d in depth for d in deps)]
        if not ready:  # a cycle: put what is left first rather than loop forever
            ready = list(remaining)
            for name in ready:
                remaining[name] = []
        for name in ready:
            deps = remaining.pop(name)
            depth[name] = 1 + max((depth[d] for d in deps), default=-1)
    result: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    position: dict[str, float] = {}
    for name in sorted(depth, key=lambda n: (depth[n], n)):
        result[depth[name]].append(name)
    for layer in result:

        def key(name: str) -> tuple[float, str]:
            deps = [position[d] for d in steps[name] if d in position]
            return (sum(deps) / len(deps) if deps else -1.0, name)

        layer.sort(key=key)
        for index, name in enumerate(layer):
            position[name] = index
    return result


def _label(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"


def step_graph(steps: Sequence[GraphStep], *, base: str) -> Markup | None:
    """The SVG graph of ``steps`` (``None`` above :data:`MAX_GRAPH_STEPS` steps).

    ``base`` is the dashboard's mount point, for the links to the jobs."""
    if not steps or len(steps) > MAX_GRAPH_STEPS:
        return None
    by_name = {s.name: s for s in steps}
    columns = layers({s.name: s.depends_on for s in steps})
    where: dict[str, tuple[int, int]] = {}
    for col, layer in enumerate(columns):
        for row, name in enumerate(layer):
            where[name] = (
                _PAD + col * (_NODE_W + _GAP_X),
                _PAD + row * (_NODE_H + _GAP_Y),
            )
    width = _PAD * 2 + len(columns) * _NODE_W + (len(columns) - 1) * _GAP_X
    height = _PAD * 2 + max(len(c) for c in columns) * (_NODE_H + _GAP_Y) - _GAP_Y
    parts: list[Markup] = []
    for step in steps:
        x2, y2 = where[step.name]
        for dep in step.depends_on:
            if dep not in where:
                continue
            x1, y1 = where[dep]
            sx, sy = x1 + _NODE_W, y1 + _NODE_H // 2
            ex, ey = x2, y2 + _NODE_H // 2
            mid = (sx + ex) // 2
            parts.append(
                Markup('<path class="edge" d="M{} {} C{} {} {} {} {} {}"/>').format(
                    sx, sy, mid, sy, mid, ey, ex, ey
                )
            )
    for layer in columns:
        for name in layer:
            step = by_name[name]
            x, y = where[name]
            node = Markup(
                '<g class="node {state}" data-step="{name}"><title>{name}: {state}</title>'
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6"/>'
                '<text x="{tx}" y="{ty1}" class="name">{label}</text>'
                '<text x="{tx}" y="{ty2}" class="state">{state}</text></g>'
            ).format(
                state=step.state,
                name=name,
                x=x,
                y=y,
                w=_NODE_W,
                h=_NODE_H,
                tx=x + 8,
                ty1=y + 15,
                ty2=y + 29,
                label=_label(name),
            )
            if step.job_id is not None:
                node = Markup('<a href="{}/jobs/{}">{}</a>').format(base, step.job_id, node)
            parts.append(node)
    return Markup(
        '<svg class="workflow-graph" role="img" aria-label="the steps and their dependencies"'
        ' viewBox="0 0 {w} {h}" width="{w}" height="{h}">{body}</svg>'
    ).format(w=width, h=height, body=Markup("").join(parts))
