"""Every mistake a prompt schedule can hold gets its own message, before anything is encoded."""

import pytest

from pyramid_flow.text import parse_prompt_schedule, schedule_units
from pyramid_flow.text.schedule import check_schedule


@pytest.mark.parametrize("text,message", [
    ("", "Prompt schedule is empty"),
    ("  \n ", "Prompt schedule is empty"),
    ("0: a red panda / 2.5.1: jumps", r"'2\.5\.1' is not a time in seconds"),
    ("0: a red panda / -1: jumps", r"the time -1 s is not a moment of the video"),
    ("0:   / 2: jumps", "the entry at 0 s has no prompt"),
    ("0: a red panda / 2:", "the entry at 2 s has no prompt"),
    ("a red panda / 3: jumps", r"text before the first '<seconds>:' entry \('a red panda'\) has no time"),
])
def test_parse_errors_name_the_entry_and_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt_schedule(text)


@pytest.mark.parametrize("text,message", [
    ("2: a red panda / 4: jumps", r"starts at 2 s: add an entry for 0 s"),
    ("0: a red panda / 4: jumps / 4: lands", r"times must increase: 4 s comes after 4 s"),
    ("0: a red panda / 4: jumps / 3: lands", r"times must increase: 3 s comes after 4 s"),
    ("0: a red panda / 0.5: jumps / 0.6: lands", r"0\.5 s and 0\.6 s fall in the same latent frame"),
])
def test_order_errors_name_both_times(text, message):
    with pytest.raises(ValueError, match=message):
        check_schedule(parse_prompt_schedule(text))


def test_times_beyond_the_video_are_named_in_a_warning_and_dropped():
    entries = parse_prompt_schedule("0: a red panda / 1: jumps / 12: lands")
    with pytest.warns(UserWarning, match=r"entries at 12 s start after the video ends \(16 latent frames, 5\.04 s\)"):
        assert schedule_units(entries, 16) == [(0, "a red panda"), (3, "jumps")]


def test_well_formed_schedules_parse():
    assert parse_prompt_schedule("0 s: a / 4.5s: b\n.5e1: c") == [(0.0, "a"), (4.5, "b"), (5.0, "c")]
    assert parse_prompt_schedule("a 3d render: a cube") == [(0.0, "a 3d render: a cube")]  # no time: one prompt
