import pytest

from preprocessing.recipes import RECIPES, Recipe, get_recipe, list_recipes


def test_named_recipes_match_the_protocols():
    li = get_recipe('li2025')
    assert li.spacing_zyx == (3.0, 1.5, 1.5) and li.shape_zyx == (120, 240, 240)
    assert li.window_hu == (-1000.0, 200.0) and li.window_out == (-1.0, 1.0)
    assert li.crop_zyx == (96, 192, 192)
    small = get_recipe('small')
    assert small.spacing_zyx == (6.0, 3.0, 3.0) and small.shape_zyx == (56, 112, 112)
    assert small.crop_zyx == (48, 96, 96)
    assert get_recipe('ctclip').crop_zyx == (240, 480, 480)
    assert get_recipe('merlin').orientation == 'RAS'
    assert set(list_recipes()) == {'li2025', 'ctclip', 'merlin', 'small'}


def test_hash_depends_on_grid_only():
    li = RECIPES['li2025']
    assert li.hash == Recipe.from_dict(li.to_dict()).hash
    assert li.replace(window_hu=(-1000, 1000)).hash == li.hash  # load-time choice
    assert li.replace(spacing_zyx=[2.0, 1.5, 1.5]).hash != li.hash
    assert len({r.hash for r in RECIPES.values()}) == len(RECIPES)


def test_round_trip_through_json_dict():
    small = get_recipe('small')
    assert get_recipe(small.to_dict()) == small


@pytest.mark.parametrize(
    'changes, message',
    [
        ({'spacing_zyx': (0, 1, 1)}, 'spacing_zyx must be 3 positive'),
        ({'shape_zyx': (1, 2)}, 'shape_zyx must be 3 positive'),
        ({'orientation': 'RAI'}, 'orientation must be one of'),
        ({'window_hu': (200, -1000)}, 'low < high'),
        ({'train_crop_zyx': (500, 10, 10)}, 'must fit in shape_zyx'),
    ],
)
def test_bad_recipes_name_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        get_recipe('small', **changes)


def test_unknown_recipe_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown recipe 'li2024'.*li2025"):
        get_recipe('li2024')
    with pytest.raises(ValueError, match='Unknown recipe fields'):
        Recipe.from_dict({**RECIPES['small'].to_dict(), 'colour': 'blue'})
