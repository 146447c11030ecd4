"""ViewerState and the presets: Qt-free rules every view relies on."""

from __future__ import annotations

import pytest

from app.render.presets import load_presets, parse_window_level
from app.state import ViewerState, probe_voxel


def test_crosshair_starts_on_the_central_voxel_and_snaps_to_voxel_centres(phantom) -> None:
    state = ViewerState()
    moves: list[tuple[float, float, float]] = []
    state.crosshair_moved.connect(moves.append)
    state.set_volume(phantom)
    assert state.crosshair_ijk == (20, 32, 32)
    assert state.crosshair_lps == phantom.index_to_lps(20, 32, 32)
    x, y, z = phantom.index_to_lps(10, 5, 7)
    assert state.set_crosshair((x + 0.4, y - 0.3, z + 1.0))  # within half a voxel of (10, 5, 7)
    assert state.crosshair_ijk == (10, 5, 7) and state.crosshair_lps == (x, y, z)
    assert not state.set_crosshair((x, y, z)), "no change, no signal"
    assert len(moves) == 2


def test_crosshair_is_clamped_inside_the_volume_and_steps_stop_at_the_edge(phantom) -> None:
    state = ViewerState()
    state.set_volume(phantom)
    state.set_crosshair((1e4, -1e4, 1e4))
    k, i, j = state.crosshair_ijk
    assert (k, i, j) == (39, 0, 63)
    assert not state.step_slice(0, +1) and state.crosshair_ijk[0] == 39
    assert state.step_slice(0, -3) and state.crosshair_ijk == (36, 0, 63)


def test_without_a_study_the_crosshair_does_not_move() -> None:
    state = ViewerState()
    assert not state.set_crosshair((0.0, 0.0, 0.0)) and not state.step_slice(0, 1)


def test_window_level_zoom_and_pan_rules(phantom) -> None:
    state = ViewerState(400, 40)
    changes: list[tuple[float, float]] = []
    state.window_level_changed.connect(lambda w, level: changes.append((w, level)))
    state.set_window_level(-5, 10)
    assert state.window_level == (1.0, 10.0), "the window never collapses to zero or below"
    state.set_window_level(1.0, 10.0)
    assert changes == [(1.0, 10.0)]
    state.zoom_view("axial", 1000)
    assert state.transform("axial").zoom == 40.0
    state.pan_view("axial", 3, -2)
    state.pan_view("axial", 1, 1)
    assert state.transform("axial").pan_mm == (4, -1) and state.transform("coronal").pan_mm == (0, 0)
    state.set_volume(phantom)
    assert state.transform("axial").zoom == 1.0, "a new study starts fitted"
    assert state.window_level == (1.0, 10.0), "and keeps the reader's W/L"


def test_probe_rounds_to_the_nearest_voxel_and_refuses_outside(phantom) -> None:
    result = probe_voxel(phantom, (20.4, 32.49, 51.6))
    assert result is not None and result.ijk == (20, 32, 52) and result.hu == phantom.hu[20, 32, 52]
    assert probe_voxel(phantom, (-0.6, 0, 0)) is None and probe_voxel(phantom, (0, 0, 63.6)) is None
    assert probe_voxel(phantom, (-0.4, 0, 63.4)) is not None


def test_window_level_argument_takes_a_preset_name_or_numbers() -> None:
    assert parse_window_level("lung") == (1500, -600)
    assert parse_window_level("Soft tissue") == (350, 40)
    assert parse_window_level("400,40") == (400, 40)
    assert parse_window_level("80/40") == (80, 40)
    with pytest.raises(ValueError, match="lung, mediastinum, bone, soft_tissue, brain"):
        parse_window_level("sunset")
    with pytest.raises(ValueError, match="positive"):
        parse_window_level("0,40")


def test_a_broken_preset_file_names_the_problem(tmp_path) -> None:
    path = tmp_path / "wl.toml"
    path.write_text('[presets.lung]\nwindow = "wide"\nlevel = -600\n')
    with pytest.raises(ValueError, match="'lung' needs numeric 'window' and 'level'"):
        load_presets(path)
    path.write_text("default = 'x'\n")
    with pytest.raises(ValueError, match="no \\[presets.NAME\\] tables"):
        load_presets(path)
