import random

from npuflow.llm_worker.stop import StopMatcher


def run(stops, pieces):
    m = StopMatcher(stops)
    out, hit = [], None
    for p in pieces:
        text, hit = m.push(p)
        out.append(text)
        if hit:
            break
    else:
        out.append(m.flush())
    return "".join(out), hit


def test_stop_split_across_pieces():
    assert run(["END"], ["abc E", "N", "D more"]) == ("abc ", "END")
    assert run(["\n\n"], ["a\n", "\nb"]) == ("a", "\n\n")


def test_earliest_stop_wins_and_no_stop_flushes():
    assert run(["xyz", "b"], ["axy", "zb"]) == ("a", "xyz")
    assert run(["xyz"], ["ax", "y"]) == ("axy", None)
    assert run([], ["a", "b"]) == ("ab", None)


def test_false_prefix_is_released():
    m = StopMatcher(["abc"])
    assert m.push("xa") == ("x", None)
    assert m.push("bd") == ("abd", None)


def test_nothing_past_a_stop_ever_leaks():
    rng = random.Random(0)
    stops = ["</s>", "STOP", "ab"]
    for _ in range(300):
        text = "".join(rng.choice("ab</s>STOPxyz ") for _ in range(40))
        cuts = sorted(rng.sample(range(1, len(text)), 8))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        got, hit = run(stops, pieces)
        first = min((text.find(s), s) for s in stops if s in text) if any(s in text for s in stops) else None
        if first is None:
            assert (got, hit) == (text, None)
        else:
            assert got == text[:first[0]] and text[first[0]:].startswith(hit)
