"""The shop's tools: typed functions over the database, turned into schemas by
`turnloom.tools.tool_from_function` (the leading `state` argument is the database).

Every tool returns ``(result, new_database)`` and never changes the database it was
given: a write copies only the tables and rows it touches, so the database a branch
forked from stays as it was. A refusal (unknown order, wrong status) raises
`ShopError`; the environment answers it to the agent as "Error: ...".
"""

from __future__ import annotations

from typing import Any, Literal

Database = dict[str, Any]
Result = tuple[Any, Database]


class ShopError(ValueError):
    """The shop refuses a request; the message is what the agent reads."""


def _row(db: Database, table: str, key: str, what: str) -> dict[str, Any]:
    row = db[table].get(key)
    if row is None:
        raise ShopError(f"{what} {key!r} not found")
    return dict(row)


def _with(db: Database, table: str, key: str, row: dict[str, Any]) -> Database:
    return {**db, table: {**db[table], key: row}}


def _money(x: float) -> float:
    return round(x, 2)


# --- reads ----------------------------------------------------------------------------

def find_customer_by_email(state: Database, email: str) -> Result:
    """Find a customer's id from their email address.

    Args:
        email: The customer's email address, for example "ana.ruiz@example.com".
    """
    wanted = email.strip().lower()
    for customer_id, customer in sorted(state["customers"].items()):
        if customer["email"].lower() == wanted:
            return customer_id, state
    raise ShopError(f"no customer with email {email!r}")


def find_customer_by_name_zip(state: Database, first_name: str, last_name: str,
                              zip_code: str) -> Result:
    """Find a customer's id from their name and postal code.

    Args:
        first_name: The customer's first name.
        last_name: The customer's last name.
        zip_code: The postal code of the customer's address.
    """
    for customer_id, c in sorted(state["customers"].items()):
        if (c["first_name"].lower() == first_name.strip().lower()
                and c["last_name"].lower() == last_name.strip().lower()
                and c["address"]["zip"] == zip_code.strip()):
            return customer_id, state
    raise ShopError("no customer with that name and postal code")


def get_customer(state: Database, customer_id: str) -> Result:
    """Get a customer's details: name, email, address, store credit and order ids.

    Args:
        customer_id: The customer's id, for example "cus_ana_ruiz".
    """
    customer = _row(state, "customers", customer_id, "customer")
    orders = sorted(o for o, order in state["orders"].items() if order["customer_id"] == customer_id)
    return {"customer_id": customer_id, **customer, "orders": orders}, state


def get_order(state: Database, order_id: str) -> Result:
    """Get an order's details: status, items, prices, total, address and payment.

    Args:
        order_id: The order's id, for example "#L1001".
    """
    return {"order_id": order_id, **_row(state, "orders", order_id, "order")}, state


def get_product(state: Database, product_id: str) -> Result:
    """Get a product's name, category, price and how many are in stock.

    Args:
        product_id: The product's id, for example "P101".
    """
    return {"product_id": product_id, **_row(state, "products", product_id, "product")}, state


def list_products(state: Database, category: str) -> Result:
    """List the products of one category with their ids, prices and stock.

    Args:
        category: The category, one of "tents", "sleeping bags", "backpacks", "stoves", "lights".
    """
    found = [{"product_id": p, **row} for p, row in sorted(state["products"].items())
             if row["category"] == category]
    if not found:
        raise ShopError(f"no products in category {category!r}")
    return found, state


# --- writes ---------------------------------------------------------------------------

def _pending(order: dict[str, Any], order_id: str, action: str) -> None:
    if order["status"] != "pending":
        raise ShopError(f"order {order_id} is {order['status']}; only pending orders can be {action}")


def cancel_order(state: Database, order_id: str,
                 reason: Literal["no longer needed", "ordered by mistake"]) -> Result:
    """Cancel a pending order; its items go back to stock and the total is refunded to
    the original payment method.

    Args:
        order_id: The order's id.
        reason: Why the customer cancels.
    """
    order = _row(state, "orders", order_id, "order")
    _pending(order, order_id, "cancelled")
    products = dict(state["products"])
    for item in order["items"]:
        product = dict(products[item["product_id"]])
        product["stock"] += item["quantity"]
        products[item["product_id"]] = product
    order.update(status="cancelled", cancel_reason=reason, refund=order["total"])
    db = _with({**state, "products": products}, "orders", order_id, order)
    return f"order {order_id} cancelled; {order['total']:.2f} refunded to {order['payment']}", db


def update_order_address(state: Database, order_id: str, street: str, city: str,
                         zip_code: str) -> Result:
    """Change the shipping address of a pending order.

    Args:
        order_id: The order's id.
        street: Street and number.
        city: City.
        zip_code: Postal code.
    """
    order = _row(state, "orders", order_id, "order")
    _pending(order, order_id, "changed")
    order["address"] = {"street": street, "city": city, "zip": zip_code}
    return f"order {order_id} will ship to {street}, {city} {zip_code}", _with(
        state, "orders", order_id, order)


def update_customer_address(state: Database, customer_id: str, street: str, city: str,
                            zip_code: str) -> Result:
    """Change a customer's default address (orders already placed keep theirs).

    Args:
        customer_id: The customer's id.
        street: Street and number.
        city: City.
        zip_code: Postal code.
    """
    customer = _row(state, "customers", customer_id, "customer")
    customer["address"] = {"street": street, "city": city, "zip": zip_code}
    return f"address of {customer_id} updated", _with(state, "customers", customer_id, customer)


def return_items(state: Database, order_id: str, product_ids: list[str],
                 refund_to: Literal["original payment", "store credit"]) -> Result:
    """Return items of a delivered order; the items' price is refunded to the original
    payment method or added to the customer's store credit.

    Args:
        order_id: The order's id.
        product_ids: The ids of the products to return (each once).
        refund_to: Where the refund goes.
    """
    order = _row(state, "orders", order_id, "order")
    if order["status"] != "delivered":
        raise ShopError(f"order {order_id} is {order['status']}; only delivered orders can be returned")
    if not product_ids or len(set(product_ids)) != len(product_ids):
        raise ShopError("list each product to return once")
    lines = {item["product_id"]: item for item in order["items"]}
    missing = [p for p in product_ids if p not in lines or lines[p].get("returned")]
    if missing:
        raise ShopError(f"order {order_id} has no returnable item {missing[0]!r}")
    refund = _money(sum(lines[p]["price"] * lines[p]["quantity"] for p in product_ids))
    order["items"] = [{**item, "returned": True} if item["product_id"] in product_ids else item
                      for item in order["items"]]
    order["refund"] = _money(order.get("refund", 0.0) + refund)
    db = _with(state, "orders", order_id, order)
    if refund_to == "store credit":
        customer = _row(db, "customers", order["customer_id"], "customer")
        customer["store_credit"] = _money(customer["store_credit"] + refund)
        db = _with(db, "customers", order["customer_id"], customer)
    return f"{refund:.2f} refunded to {order['payment'] if refund_to == 'original payment' else 'store credit'}", db


def exchange_item(state: Database, order_id: str, product_id: str, new_product_id: str) -> Result:
    """Exchange one delivered item for a product of the same category that is in stock;
    the price difference is charged to, or refunded to, the original payment method.

    Args:
        order_id: The order's id.
        product_id: The product to send back.
        new_product_id: The product to receive instead.
    """
    order = _row(state, "orders", order_id, "order")
    if order["status"] != "delivered":
        raise ShopError(f"order {order_id} is {order['status']}; only delivered orders can be exchanged")
    item = next((i for i in order["items"] if i["product_id"] == product_id
                 and not i.get("returned")), None)
    if item is None:
        raise ShopError(f"order {order_id} has no exchangeable item {product_id!r}")
    old = _row(state, "products", product_id, "product")
    new = _row(state, "products", new_product_id, "product")
    if new["category"] != old["category"] or new_product_id == product_id:
        raise ShopError(f"{new_product_id} is not another product of category {old['category']!r}")
    if new["stock"] < item["quantity"]:
        raise ShopError(f"{new_product_id} is out of stock")
    difference = _money((new["price"] - item["price"]) * item["quantity"])
    new["stock"] -= item["quantity"]
    old["stock"] += item["quantity"]
    order["items"] = [{"product_id": new_product_id, "quantity": item["quantity"],
                       "price": new["price"]} if i is item else i for i in order["items"]]
    order["total"] = _money(order["total"] + difference)
    db = _with(_with(state, "products", new_product_id, new), "products", product_id, old)
    db = _with(db, "orders", order_id, order)
    verb = "charged" if difference >= 0 else "refunded"
    return f"exchanged; {abs(difference):.2f} {verb} to {order['payment']}", db


def transfer_to_human(state: Database, summary: str) -> Result:
    """Hand the conversation to a human agent, with a summary of the customer's issue.

    Args:
        summary: What the customer needs and what was done so far.
    """
    return "transferred to a human agent", state


TOOLS = (find_customer_by_email, find_customer_by_name_zip, get_customer, get_order,
         get_product, list_products, cancel_order, update_order_address,
         update_customer_address, return_items, exchange_item, transfer_to_human)
WRITE_TOOLS = frozenset({"cancel_order", "update_order_address", "update_customer_address",
                         "return_items", "exchange_item"})
