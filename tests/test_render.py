"""Personalisation: sandboxed Jinja templates, validated at save time, never failing
at send time."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from propel.campaigns import render
from propel.campaigns.content_validation import TemplateError, validate_content
from propel.campaigns.render import build_context, choose_variant
from propel.campaigns.sandbox import MAX_OUTPUT_CHARS
from propel.db.meta import utcnow
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.predictions.tables import predictions, user_predictions


def email(subject: str = "Hello", html: str = "<p>Hi</p>", **more: object) -> dict:
    return {"variants": [{"name": "A", "split": 100, "subject": subject, "html": html,
                          **more}]}


def problem_of(channel: str, content: dict) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        validate_content(channel, content)
    return info.value


ADA = build_context(
    {"identity": "u1", "email": "ada@example.com", "first_name": "Ada", "plan": "pro",
     "phone": None},
    predictions=[{"prediction": "Predict Conversions", "group": "High", "score": 87.5}],
    event={"product_name": "Walnut desk", "price": 349.0}, campaign_name="Spring")
BARE = build_context({"identity": "u2", "email": "b@example.com"})


def test_renders_profile_prediction_event_and_campaign_data() -> None:
    variant = {
        "name": "A",
        "subject": "{{ user.first_name | default('there') }}, about {{ event.product_name }}",
        "html": "<p>{{ predictions['Predict Conversions'].group }} "
                "({{ predictions['Predict Conversions'].score }}) — {{ campaign.name }}</p>",
    }
    out = render.render("email", variant, ADA)
    assert out["subject"] == "Ada, about Walnut desk"
    assert out["html"] == "<p>High (87.5) — Spring</p>"
    assert out["text"] == "High (87.5) — Spring"  # derived from the HTML


def test_defaults_and_missing_values_render_empty_never_raise() -> None:
    variant = {"name": "A", "subject": "Hi {{ user.first_name | default('there') }}",
               "text": "[{{ user.first_name }}][{{ user.phone }}][{{ user.a.b.c }}]"
                       "[{{ predictions['Predict Churn'].group | default('n/a') }}]"
                       "[{{ user.points + 1 }}][{{ event.x | default('none') }}]"}
    out = render.render("email", variant, BARE)
    assert out["subject"] == "Hi there"
    assert out["text"] == "[][][][n/a][][none]"
    assert out["html"] == ""


def test_autoescape_only_in_html() -> None:
    ctx = build_context({"identity": "u", "first_name": "<script>x</script> & co"})
    variant = {"name": "A", "subject": "{{ user.first_name }}",
               "html": "<p>{{ user.first_name }}</p>", "text": "{{ user.first_name }}"}
    out = render.render("email", variant, ctx)
    assert out["html"] == "<p>&lt;script&gt;x&lt;/script&gt; &amp; co</p>"
    assert out["subject"] == "<script>x</script> & co"
    assert out["text"] == "<script>x</script> & co"
    push = render.render("push", {"title": "{{ user.first_name }}", "body": "b",
                                  "data": {"n": "{{ user.first_name }}"}}, ctx)
    assert push["title"] == "<script>x</script> & co"
    assert push["data"] == {"n": "<script>x</script> & co"}


def test_single_line_fields_cannot_inject_headers() -> None:
    ctx = build_context({"identity": "u", "first_name": "Ada\r\nBcc: victim@example.com"})
    out = render.render("email", {"subject": "Hi {{ user.first_name }}", "text": "t"}, ctx)
    assert "\n" not in out["subject"] and "\r" not in out["subject"]


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ user['__class__'] }}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_sandbox_blocks_unsafe_attribute_access(source: str) -> None:
    err = problem_of("email", email(subject=source))
    assert err.field == "subject" and err.line == 1
    assert "not allowed" in err.reason
    out = render.render("email", {"subject": source, "html": "x"}, ADA)
    assert "class" not in out["subject"] and "function" not in out["subject"]


@pytest.mark.parametrize("source, reason", [
    ("{% set l = [1] %}{{ l.append(2) }}", "not allowed"),  # no mutation
    ("{% include 'other.html' %}", "not allowed"),
    ("{% for i in range(100000) %}{% endfor %}", "range"),
    ("{% for i in range(1000) %}{% for j in range(1000) %}{{ i }}{% endfor %}{% endfor %}",
     "too much work"),
    ("{{ 'x' * 100000000 }}", "too large"),
    ("{{ 9 ** 99999 }}", "too large"),
    ("{{ '%999999999d' | format(1) }}", "format width"),
    ("{{ '{:>999999999}'.format(1) }}", "format width"),
    ("{{ 'x' | center(999999999) }}", "width"),
])
def test_sandbox_refuses_unsafe_or_runaway_constructs(source: str, reason: str) -> None:
    err = problem_of("email", email(html=source))
    assert err.field == "html" and reason in err.reason, err.reason
    out = render.render("email", {"subject": "s", "html": source}, ADA)  # never raises
    assert len(out["html"]) <= MAX_OUTPUT_CHARS


def test_syntax_error_reports_variant_field_and_line() -> None:
    content = {"variants": [
        {"name": "A", "split": 50, "subject": "ok", "html": "<p>fine</p>"},
        {"name": "B", "split": 50, "subject": "ok", "html": "<p>one</p>\n<p>two</p>\n"
                                                               "{% if user.vip %}\n<p>x</p>"},
    ]}
    err = problem_of("email", content)
    assert (err.variant, err.field) == ("B", "html")
    assert err.line == 3  # the unclosed {% if %}
    assert "syntax error" in err.reason
    assert "variant 'B', field 'html', line 3" in str(err)

    err = problem_of("sms", {"variants": [{"name": "S", "body": "hi\n\n{{ user.name ) }}"}]})
    assert (err.field, err.line) == ("body", 3)


def test_template_failing_for_a_sample_user_fails_at_validate_time() -> None:
    # Fine for a user with a first name, but empty for one without: refused at save time.
    err = problem_of("email", email(html="<p>Hi</p>\n<p>{{ user.first_name }}</p>"))
    assert (err.variant, err.field, err.line) == ("A", "html", 2)
    assert "first_name" in err.reason and "default" in err.reason

    err = problem_of("push", {"variants": [{"name": "A", "title": "t",
                                            "body": "{{ user.orders * 2 }}"}]})
    assert err.field == "body" and "orders" in err.reason

    err = problem_of("inbox", {"variants": [{
        "name": "A", "title": "t", "body": "{{ predictions['Predict Churn'].group }}"}]})
    assert "Predict Churn" in err.reason

    # A runtime error (not an undefined value) is reported with its line, too.
    err = problem_of("sms", {"variants": [{"name": "A", "body": "x\n{{ 1 / 0 }}"}]})
    assert err.line == 2 and "ZeroDivisionError" in err.reason

    # With fallbacks, tests and loops it validates, and renders for any user.
    good = ("Hi {{ user.first_name | default('there') }}"
            "{% if user.vip %} VIP{% endif %}"
            "{% for item in event.items %}{{ item }}{% endfor %}"
            " {{ (user.orders | default(0)) * 2 }}"
            " {{ predictions['Predict Churn'].group | default('') }}"
            " {{ user.address.city | default('') }}")
    validate_content("sms", {"variants": [{"name": "A", "body": good}]})
    assert render.render("sms", {"body": good}, BARE)["body"].startswith("Hi there")
    cart = build_context({"identity": "u"}, event={"items": ["desk", "lamp"]})
    assert "desklamp" in render.render("sms", {"body": good}, cart)["body"]


def test_data_keys_win_over_dict_methods() -> None:
    ctx = build_context({"identity": "u", "values": "kindness", "plan": "pro"})
    body = "{{ user.values }}|{{ user['items'] | default('-') }}|" \
           "{% for k, v in user | items %}{{ k }}={{ v }};{% endfor %}"
    assert render.render("sms", {"body": body}, ctx)["body"] == \
        "kindness|-|identity=u;values=kindness;plan=pro;"


def test_a_field_failing_on_odd_data_falls_back_to_the_minimal_user() -> None:
    variant = {"name": "A", "body": "Hi {{ user.first_name | default('there') }}, "
                                    "{% for p in user.plan %}{{ p }}{% endfor %}done"}
    validate_content("sms", {"variants": [variant]})
    odd = build_context({"identity": "u", "first_name": "Kim", "plan": 7})
    assert render.render("sms", variant, odd)["body"] == "Hi there, done"
    assert render.render("sms", {"body": "{{ x"}, odd)["body"] == ""  # never validated


def test_extra_samples_are_tried_too() -> None:
    content = {"variants": [{"name": "A", "body": "{{ (user.orders | default(0)) + 1 }}"}]}
    validate_content("sms", content)
    odd = build_context({"identity": "x", "phone": "+14155550123", "orders": "three"})
    with pytest.raises(TemplateError, match="sample user #1"):
        validate_content("sms", content, samples=[odd])


def test_required_fields_unknown_fields_and_splits() -> None:
    assert problem_of("email", {"variants": [{"name": "A", "html": "x"}]}).field == "subject"
    assert problem_of("email", {"variants": [{"name": "A", "subject": "s"}]}).field == "html"
    assert problem_of("sms", {"variants": [{"name": "A", "body": "   "}]}).reason == \
        "is required"
    err = problem_of("inbox", {"variants": [{"name": "A", "title": "t", "body": "b",
                                             "subjct": "typo"}]})
    assert err.field == "subjct"
    err = problem_of("sms", {"variants": [{"name": "A", "split": 60, "body": "a"},
                                          {"name": "B", "split": 30, "body": "b"}]})
    assert err.field == "split" and "add up to 100" in err.reason
    err = problem_of("sms", {"variants": [{"name": "A", "body": "a"},
                                          {"name": "A", "body": "b"}]})
    assert err.field == "name"
    assert problem_of("sms", {"variants": []}).field == "variants"
    assert problem_of("fax", {"variants": [{"name": "A"}]}).field == "channel"
    err = problem_of("email", email(subject="{{ user.first_name | default('') }}"))
    assert "renders empty" in err.reason
    err = problem_of("push", {"variants": [{"name": "A", "body": "b",
                                            "url": "javascript:alert(1)"}]})
    assert err.field == "url" and "scheme" in err.reason
    err = problem_of("push", {"variants": [{"name": "A", "body": "b", "data": {"k": 1}}]})
    assert err.field == "data.k"
    # all problems are listed, not just the first
    err = problem_of("sms", {"variants": [{"name": "A", "body": "{{ x"},
                                          {"name": "B", "body": "{{ y"}]})
    assert [p["variant"] for p in err.problems] == ["A", "B"]


def test_every_channel_validates_and_renders_its_fields() -> None:
    contents = {
        "email": {"subject": "s", "html": "<p>h</p>", "text": "t"},
        "push": {"title": "t", "body": "b", "url": "myapp://home", "data": {"k": "v"}},
        "sms": {"body": "b"},
        "inbox": {"title": "t", "body": "b", "url": "https://example.com/x"},
        "webhook": {"body": "b", "data": {"plan": "{{ user.plan | default('free') }}"}},
    }
    for channel, fields in contents.items():
        validate_content(channel, {"variants": [{"name": "A", **fields}]})
        out = render.render(channel, fields, ADA)
        assert set(out) == set(render.FIELDS[channel])
    assert render.render("webhook", contents["webhook"], BARE)["data"] == {"plan": "free"}
    assert render.render("push", {"body": "b", "url": " javascript:x"}, BARE)["url"] == ""


def test_text_part_is_derived_from_html() -> None:
    html = ("<html><head><style>p{color:red}</style><title>T</title></head><body>"
            "<h1>Spring&nbsp;sale</h1><p>Hello   <b>Ada</b>,<br>see "
            "<a href=\"https://shop.example/s?a=1&amp;b=2\">our picks</a>.</p>"
            "<ul><li>One</li><li>Two</li></ul><script>evil()</script></body></html>")
    assert render.html_to_text(html) == (
        "Spring sale\n\nHello Ada,\nsee our picks (https://shop.example/s?a=1&b=2).\n\n"
        "- One\n- Two")
    out = render.render("email", {"subject": "s", "html": html, "text": ""}, BARE)
    assert "our picks" in out["text"] and "evil" not in out["text"]
    out = render.render("email", {"subject": "s", "html": html, "text": "mine"}, BARE)
    assert out["text"] == "mine"


def test_choose_variant_is_deterministic_and_follows_splits() -> None:
    variants = [{"name": "A", "split": 70}, {"name": "B", "split": 20},
                {"name": "C", "split": 10}, {"name": "D", "split": 0}]
    picks = [choose_variant(variants, f"9:user-{i}") for i in range(20_000)]
    assert picks == [choose_variant(variants, f"9:user-{i}") for i in range(20_000)]
    counts = Counter(picks)
    assert counts["D"] == 0
    for name, share in (("A", 0.7), ("B", 0.2), ("C", 0.1)):
        assert abs(counts[name] / 20_000 - share) < 0.015, counts
    even = Counter(choose_variant([{"name": "X"}, {"name": "Y"}], str(i)) for i in range(4000))
    assert abs(even["X"] - 2000) < 150
    assert choose_variant([{"name": "only", "split": 100}], "k") == "only"


@settings(max_examples=150, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["first_name", "orders", "vip", "city", "plan"]),
                       st.one_of(st.none(), st.text(max_size=20), st.integers(), st.floats(),
                                 st.booleans(), st.lists(st.integers(), max_size=3),
                                 st.dictionaries(st.text(max_size=3), st.integers(),
                                                 max_size=2))))
def test_a_validated_template_renders_for_any_user(props: dict) -> None:
    variant = {"name": "A", "subject": "Hi {{ user.first_name | default('there') }}",
               "html": "<p>{{ user.city | default('your city') | title }}"
                       "{% if user.vip %} ★{% endif %}"
                       " {{ (user.orders | default(0)) * 2 }}"
                       "{% for p in user.plan %}{{ p }}{% endfor %}</p>"}
    validate_content("email", {"variants": [variant]})
    out = render.render("email", variant, build_context({"identity": "u", **props}))
    assert out["subject"].startswith("Hi") and out["html"].startswith("<p>")


def test_preview_uses_the_chosen_users_profile_and_predictions(propel, tenant) -> None:
    update = ProfileUpdate(identity="u-77", email="kim@example.com",
                           properties={"first_name": "Kim"})
    ingest_sync(propel.db, tenant.id, [IngestItem(key_hash(tenant.id, "p1"), profile=update)],
                [], "api")
    now = utcnow()

    def seed(conn):
        conn.execute(insert(predictions).values(
            id="pred1", account_id=tenant.id, name="Predict Conversions", goal_event="Charged",
            polarity="desired", window_days=30, groups="{}", created_at=now, updated_at=now))
        conn.execute(insert(user_predictions).values(
            prediction_id="pred1", identity="u-77", account_id=tenant.id, probability=0.8,
            score=80.0, grp="High", model_version=1, scored_at=now))

    propel.db.write(seed)
    content = {"variants": [
        {"name": "A", "split": 50, "subject": "Hi {{ user.first_name | default('there') }}",
         "html": "<p>{{ predictions['Predict Conversions'].group | default('?') }}"
                 " {{ event.sku | default('') }}</p>"},
        {"name": "B", "split": 50, "subject": "Yo {{ user.email }}", "text": "plain"}]}
    validate_content("email", content)
    shown = render.preview(propel, tenant.id, "email", content, "u-77", event={"sku": "S1"})
    assert shown["A"]["subject"] == "Hi Kim"
    assert shown["A"]["html"] == "<p>High S1</p>"
    assert shown["B"] == {"subject": "Yo kim@example.com", "html": "", "text": "plain"}
    assert list(render.preview(propel, tenant.id, "email", content, "u-77", variant="B")) == \
        ["B"]
    with pytest.raises(LookupError):
        render.preview(propel, tenant.id, "email", content, "nobody")
