"""The shipped arithmetic dataset: 30 problems the project wrote, each answer computed here again
from the problem's own numbers (exact fractions, so a division that does not come out even fails)."""
from __future__ import annotations

import json
import math
import re
from fractions import Fraction

from moa_dsl.evaluation.data import dataset_names, read_items

from conftest import DATASETS

# One expression per problem, in file order, written from the problem's wording.
EXPRESSIONS = [
    '24 - 7 + 15',  # Maya has 24 stickers. She gives 7 to her brother and then buys 15 more
    '6 * 12 - 50',  # A baker makes 6 trays of muffins with 12 muffins on each tray. He sell
    '18 * 5 + 25',  # Tom reads 18 pages a day for 5 days, then 25 pages on the sixth day. H
    '96 // 8',  # A box holds 8 pencils. How many boxes are needed to hold 96 pencils?
    '15 * (7 + 4)',  # Sara earns 15 dollars an hour and works 7 hours on Monday and 4 hours 
    '4 * 28 + 3 * 31',  # A school has 4 classes of 28 students and 3 classes of 31 students. Ho
    '(120 // 12 - 2) * 3',  # A farmer has 120 eggs and packs them in cartons of 12. He keeps 2 cart
    '250 - 85 - 42',  # Liam had 250 dollars. He spent 85 dollars on shoes and 42 dollars on a
    '60 * 3 + 45 * 2',  # A train travels 60 kilometres an hour for 3 hours and then 45 kilometr
    '9 * 14 - 37',  # There are 9 rows of chairs with 14 chairs in each row. 37 chairs are t
    '-(-(5 * 3) // 8)',  # A pizza is cut into 8 slices. Five friends each eat 3 slices. How many
    '180 // 12',  # Emma saves 12 dollars every week. How many weeks does she need to save
    '2 * (13 + 7)',  # A rectangle is 13 metres long and 7 metres wide. What is its perimeter
    '16 * 9',  # A garden is 16 metres long and 9 metres wide. What is its area in squa
    '50 - (3 * 4 + 2 * 3)',  # Noah buys 3 notebooks at 4 dollars each and 2 pens at 3 dollars each. 
    '1200 + 350 - 175',  # A library had 1,200 books. It received 350 new books and gave away 175
    '45 * 7',  # Each bus seats 45 people. How many people can 7 buses seat?
    '35 // 5 * 2',  # A shop sells apples at 2 dollars for 5 apples. How many dollars do 35 
    '3 * 11 + 6',  # Olivia is 3 times as old as her son, who is 11. How old will Olivia be
    '500 // 25',  # A tank holds 500 litres. It is filled at 25 litres a minute. How many 
    '32 // 4 * 3',  # A class of 32 students splits into teams of 4. Each team needs 3 marke
    '5 + 2 * 5 + (2 * 5 - 3)',  # James ran 5 kilometres on Monday, twice that on Wednesday, and 3 kilom
    '38 * 6 + 12',  # A concert ticket costs 38 dollars. A group of 6 friends buys tickets a
    '7 - 12',  # The temperature was 7 degrees in the morning and dropped by 12 degrees
    '1450 * 6',  # A factory makes 1,450 toys a day. How many toys does it make in 6 days
    '(3 * 17 - 9) // 2',  # Ben has 3 bags with 17 marbles each. He loses 9 marbles and then share
    '250 * 36 // 10',  # A recipe needs 250 grams of flour for 10 cookies. How many grams of fl
    '8 * 450 // 100',  # A car uses 8 litres of fuel per 100 kilometres. How many litres does i
    '(78 + 85 + 92) // 3',  # Mia scored 78, 85 and 92 on three tests. What is her average score?
    '40 - 40 * 25 // 100',  # A shirt costs 40 dollars and is on sale for 25 percent off. How many d
]


def _value(expression: str) -> Fraction:
    """The expression over exact fractions: `//` must divide evenly (the problems say so), and
    `-(-a // b)` is a ceiling division (whole pizzas to order)."""
    if expression.startswith("-(-"):
        inner = expression[3:-1]
        numerator, denominator = inner.split(" // ")
        return Fraction(math.ceil(Fraction(eval(numerator.strip("()"))) / int(denominator)))
    exact = re.sub(r"(\d+)", r"Fraction(\1)", expression).replace("//", "/")
    return eval(exact, {"Fraction": Fraction})


def test_every_answer_is_the_value_of_its_problem() -> None:
    rows = [json.loads(line) for line in (DATASETS / "arithmetic.jsonl").read_text().splitlines()]
    assert len(rows) == len(EXPRESSIONS) == 30
    for row, expression in zip(rows, EXPRESSIONS):
        value = _value(expression)
        assert value.denominator == 1, (expression, value)
        assert row["answer"] == str(int(value)), (row["instruction"], expression)
        assert set(row) == {"instruction", "answer"}
        assert row["instruction"].endswith('end your answer with a line "#### <number>" giving the final answer as a plain number.')


def test_each_problem_states_the_numbers_its_expression_uses() -> None:
    rows = [json.loads(line) for line in (DATASETS / "arithmetic.jsonl").read_text().splitlines()]
    # A number the wording implies rather than writes: twice, a perimeter's two sides, sharing
    # equally between two, five friends, three tests, a percentage.
    implied = {"2": ("twice", "perimeter", "equally"), "5": ("five",), "3": ("three",), "100": ("percent",)}
    for row, expression in zip(rows, EXPRESSIONS):
        text = row["instruction"].replace(",", "")
        for number in re.findall(r"\d+", expression):
            said = number in re.findall(r"\d+", text) or any(w in text.lower() for w in implied.get(number, ()))
            assert said, (number, text)


def test_arithmetic_is_a_shipped_name() -> None:
    assert "arithmetic" in dataset_names()
    items = read_items("arithmetic", limit=3)
    assert [i.answer for i in items] == ["32", "22", "115"]
    assert items[0].where == "arithmetic:1"
