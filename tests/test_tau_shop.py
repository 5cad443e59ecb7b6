"""The tau-style shop: every tool on the database (reads, writes, refusals), writes never
change the database they were given, tasks and their expected states, task order."""

from __future__ import annotations

import copy
import json
import random

import pytest

pytest.importorskip("turnloom_tau")

from turnloom.messages import ToolCall  # noqa: E402
from turnloom.tools.parsers import HermesParser  # noqa: E402
from turnloom_tau import shop  # noqa: E402
from turnloom_tau.plugin import Customer, ShopAgent, ShopEnvironment, task_of  # noqa: E402
from turnloom_tau.tasks import (  # noqa: E402
    STOP,
    TOOLKIT,
    expected_state,
    gold_dialogue,
    load_database,
    load_tasks,
    scripted_lines,
    task_for_index,
)
from turnloom.records import ConversationState  # noqa: E402


@pytest.fixture
def db():
    return load_database()


def call(db, name, **args):
    return TOOLKIT.call(ToolCall("call_x", name, json.dumps(args)), db)


def test_at_least_eight_tools_all_described_from_typed_functions():
    names = [s["function"]["name"] for s in TOOLKIT.schemas]
    assert len(names) >= 8 and len(shop.WRITE_TOOLS) >= 4
    cancel = next(s for s in TOOLKIT.schemas if s["function"]["name"] == "cancel_order")
    assert cancel["function"]["parameters"]["properties"]["reason"]["enum"] == [
        "no longer needed", "ordered by mistake"]
    assert "state" not in cancel["function"]["parameters"]["properties"]


def test_reads(db):
    assert call(db, "find_customer_by_email", email="Ana.Ruiz@example.com").text == "cus_ana_ruiz"
    assert call(db, "find_customer_by_name_zip", first_name="ben", last_name="Okafor",
                zip_code="97214").text == "cus_ben_okafor"
    customer = json.loads(call(db, "get_customer", customer_id="cus_ana_ruiz").text)
    assert customer["orders"] == ["#L1001", "#L1002", "#L1003"]
    order = json.loads(call(db, "get_order", order_id="#L1004").text)
    assert (order["status"], order["total"]) == ("pending", 419.0)
    assert json.loads(call(db, "get_product", product_id="P104").text)["price"] == 529.0
    stoves = json.loads(call(db, "list_products", category="stoves").text)
    assert [p["product_id"] for p in stoves] == ["P401", "P402", "P403"]
    assert call(db, "transfer_to_human", summary="x").state is db


@pytest.mark.parametrize("name, args, words", [
    ("find_customer_by_email", {"email": "nobody@example.com"}, "no customer with email"),
    ("get_order", {"order_id": "#L9"}, "order '#L9' not found"),
    ("cancel_order", {"order_id": "#L1005", "reason": "no longer needed"}, "is shipped; only pending"),
    ("update_order_address", {"order_id": "#L1002", "street": "a", "city": "b", "zip_code": "c"},
     "is delivered; only pending"),
    ("return_items", {"order_id": "#L1001", "product_ids": ["P302"], "refund_to": "store credit"},
     "only delivered orders can be returned"),
    ("return_items", {"order_id": "#L1002", "product_ids": ["P999"], "refund_to": "store credit"},
     "no returnable item 'P999'"),
    ("exchange_item", {"order_id": "#L1009", "product_id": "P201", "new_product_id": "P203"},
     "P203 is out of stock"),
    ("exchange_item", {"order_id": "#L1009", "product_id": "P201", "new_product_id": "P101"},
     "not another product of category 'sleeping bags'"),
    ("list_products", {"category": "kayaks"}, "no products in category"),
])
def test_refusals_are_tool_errors_and_change_nothing(db, name, args, words):
    before = copy.deepcopy(db)
    result = call(db, name, **args)
    assert result.error is not None and result.error.kind == "tool_failed"
    assert words in result.text and result.text.startswith("Error: ")
    assert result.state is db and db == before


def test_cancel_restocks_and_refunds_without_touching_the_input(db):
    before = copy.deepcopy(db)
    result = call(db, "cancel_order", order_id="#L1001", reason="no longer needed")
    assert result.error is None and db == before
    new = result.state
    assert new["orders"]["#L1001"]["status"] == "cancelled"
    assert new["orders"]["#L1001"]["refund"] == 228.0
    assert new["products"]["P302"]["stock"] == db["products"]["P302"]["stock"] + 1
    assert new["customers"] is db["customers"]  # untouched tables are shared, not copied


def test_return_to_store_credit_and_exchange_arithmetic(db):
    result = call(db, "return_items", order_id="#L1016", product_ids=["P501"],
                  refund_to="store credit")
    assert result.text == "58.00 refunded to store credit"
    assert result.state["customers"]["cus_farid_haddad"]["store_credit"] == 15.0 + 58.0
    again = call(result.state, "return_items", order_id="#L1016", product_ids=["P501"],
                 refund_to="store credit")
    assert again.error is not None and "no returnable item" in again.text
    swap = call(db, "exchange_item", order_id="#L1022", product_id="P302", new_product_id="P303")
    assert swap.text.startswith("exchanged; 70.00 charged")
    assert swap.state["orders"]["#L1022"]["total"] == 378.0
    assert swap.state["products"]["P303"]["stock"] == 0
    assert swap.state["products"]["P302"]["stock"] == db["products"]["P302"]["stock"] + 1


def test_address_updates(db):
    order = call(db, "update_order_address", order_id="#L1029", street="12 Canyon Rd",
                 city="Sedona", zip_code="86336").state
    assert order["orders"]["#L1029"]["address"] == {"street": "12 Canyon Rd", "city": "Sedona",
                                                    "zip": "86336"}
    assert order["customers"]["cus_luis_moreno"] == db["customers"]["cus_luis_moreno"]
    account = call(db, "update_customer_address", customer_id="cus_ben_okafor", street="1 A St",
                   city="Portland", zip_code="97202").state
    assert account["customers"]["cus_ben_okafor"]["address"]["zip"] == "97202"


# --- tasks ----------------------------------------------------------------------------

def test_thirty_tasks_with_goals_instructions_and_unique_ids():
    tasks = load_tasks()
    assert len(tasks) >= 30 and len({t.id for t in tasks}) == len(tasks)
    assert all(t.goal and t.instruction and t.opening and t.answer for t in tasks)


def test_expected_states_differ_exactly_where_a_task_writes(db):
    for task in load_tasks():
        expected = expected_state(task)
        assert (expected != db) == bool(task.writes), task.id
        if task.writes:
            assert task.confirm, task.id


def test_expected_state_is_the_gold_writes_applied_here():
    task = next(t for t in load_tasks() if t.id == "shop-15")  # return for store credit
    expected = expected_state(task)
    assert expected["customers"]["cus_chloe_nakamura"]["store_credit"] == 159.0
    assert expected["orders"]["#L1009"]["items"][0]["returned"] is True
    expected["orders"].clear()  # a fresh copy each time
    assert expected_state(task)["orders"]


def test_every_required_output_is_in_the_gold_answer():
    for task in load_tasks():
        for output in task.outputs:
            assert output.lower() in task.answer.lower().replace(",", ""), task.id


def test_task_order_by_index():
    n = len(load_tasks())
    assert [task_for_index(i, 3) for i in range(7)] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1),
                                                        (2, 1), (0, 2)]
    assert task_for_index(n + 4) == (4, 1)
    with pytest.raises(ValueError, match="must be >= 0"):
        task_for_index(-1)
    conversation = ConversationState("c", index=n * 2 + 5, seed=0)
    task, trial = task_of(conversation)
    assert (task.id, trial) == (load_tasks()[5].id, 2)


def test_gold_dialogue_carries_hermes_calls_that_reproduce_the_expected_state(db):
    parser = HermesParser()
    for task in load_tasks():
        lines = gold_dialogue(task)
        assert lines[0] == ("customer", task.opening) and lines[-1] == ("customer", STOP)
        state = db
        calls = []
        for who, text in lines:
            if who == "agent":
                calls += parser.parse(text, random.Random(0)).calls
        assert [c.name for c in calls] == [name for name, _ in task.actions], task.id
        for c in calls:
            result = TOOLKIT.call(c, state)
            assert result.error is None, (task.id, result.text)
            state = result.state
        assert state == expected_state(task), task.id
    assert len(scripted_lines("customer")) == sum(
        sum(who == "customer" for who, _ in gold_dialogue(t)) for t in load_tasks())


# --- components -----------------------------------------------------------------------

def test_environment_answers_calls_and_errors_without_raising(db):
    env = ShopEnvironment()
    conversation = ConversationState("c", index=0, seed=0)
    assert env.initial_state(conversation) == db
    assert len(env.tools(conversation, "shop")) == len(TOOLKIT.schemas)
    ok = env.answer(ToolCall("c1", "cancel_order", '{"order_id": "#L1001", "reason": "no longer needed"}'), db)
    assert ok.error is None and ok.state["orders"]["#L1001"]["status"] == "cancelled"
    for bad, kind in [('{"order_id": ', "invalid_json"), ('{"order_id": "#L1001"}', "invalid_arguments")]:
        out = env.answer(ToolCall("c2", "cancel_order", bad), db)
        assert out.error is not None and out.error.kind == kind and out.state is db
    out = env.answer(ToolCall("c3", "delete_everything", "{}"), db)
    assert out.error is not None and out.error.kind == "unknown_tool"


def test_customer_sees_its_instruction_and_stops_like_tau_bench():
    customer = Customer({"environment": "shop"})
    conversation = ConversationState("c", index=3, seed=0)
    prompt = customer.system_prompt(conversation, "customer")
    assert load_tasks()[3].instruction in prompt and STOP in prompt
    assert customer.role_in_view("shop", "customer") is None
    assert customer.role_in_view("agent", "customer") == "user"
    reply = customer.on_output(conversation, "customer", "Thanks! ###STOP###", "stop")
    assert (reply.text, reply.stop) == ("Thanks!", "customer_stop")
    assert customer.on_output(conversation, "customer", " ok ", "stop").stop is None
    with pytest.raises(ValueError, match="tau-customer settings"):
        Customer({"enviroment": "shop"})


def test_agent_prompt_is_the_policy():
    agent = ShopAgent()
    prompt = agent.system_prompt(ConversationState("c", index=0, seed=0), "agent")
    assert "Authenticate the customer first" in prompt
    with pytest.raises(ValueError, match="unknown tool-call parser 'qwen'"):
        ShopAgent({"parser": "qwen"})


def turn(i, participant, text, **extra):
    from turnloom.records import TurnRecord

    return TurnRecord("c", 0, i, participant, "assistant", text, i, **extra)


def test_environment_answers_one_pending_call_per_turn_with_its_id_and_new_state(db):
    import msgspec

    env, agent = ShopEnvironment(), ShopAgent()
    conversation = ConversationState("c", index=0, seed=0)
    text = HermesParser().render("Cancelling now.", [
        ("cancel_order", {"order_id": "#L1001", "reason": "no longer needed"}),
        ("get_order", {"order_id": "#L9"})])
    reply = agent.on_output(conversation, "agent", text, "stop")
    assert reply.text == "Cancelling now." and [c.name for c in reply.tool_calls] == [
        "cancel_order", "get_order"]
    conversation.turns.append(turn(0, "agent", reply.text, tool_calls=reply.tool_calls))
    first = env.respond(conversation, "shop", random.Random(0))
    assert first.tool_call_id == reply.tool_calls[0].id and first.meta == {}
    assert first.state["orders"]["#L1001"]["status"] == "cancelled"
    conversation.turns.append(turn(1, "shop", first.text, tool_call_id=first.tool_call_id))
    conversation.state_json = msgspec.json.encode(first.state)
    second = env.respond(conversation, "shop", random.Random(0))
    assert second.tool_call_id == reply.tool_calls[1].id
    assert second.meta == {"tool_error": "tool_failed"} and "not found" in second.text
    assert second.state["orders"]["#L1001"]["status"] == "cancelled"  # kept across the error
    conversation.turns.append(turn(2, "shop", second.text, tool_call_id=second.tool_call_id))
    assert conversation.pending_tool_calls() == []
