"""The rules labeler: per-class negation/uncertainty, evidence, determinism, real-report accuracy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from llm_labeling import rules_cv
from llm_labeling.rules import RulesLabeler
from llm_labeling.schema import FINDINGS, ReportAnnotation, Status
from tests.conftest import shared_path

# finding: (present sentence, negated sentence, hedged sentence), in CT-RATE's style.
CASES = {
    'Medical material': (
        'A catheter extending from the right internal jugular vein to the superior vena cava was observed.',
        'No foreign body or medical device was observed.',
        'A port catheter may be present in the right chest wall.',
    ),
    'Arterial wall calcification': (
        'Calcific atheroma plaques are observed in the aortic arch.',
        'No atherosclerotic calcification was observed in the thoracic aorta.',
        'Calcified plaques are suspected in the aortic arch.',
    ),
    'Cardiomegaly': (
        'The cardiothoracic ratio increased in favor of the heart.',
        'Mediastinal main vascular structures, heart contour, size are normal, no cardiomegaly.',
        'Possible cardiomegaly is noted.',
    ),
    'Pericardial effusion': (
        'Minimal pericardial effusion is observed.',
        'Pericardial effusion-thickening was not observed.',
        'Pericardial effusion cannot be excluded.',
    ),
    'Coronary artery wall calcification': (
        'Calcific atherosclerotic plaque was observed in the proximal LAD.',
        'No calcification was detected in the coronary arteries.',
        'Findings suspicious for coronary artery calcification are observed.',
    ),
    'Hiatal hernia': (
        'There is a sliding type hiatal hernia at the lower end of the esophagus.',
        'Thoracic esophagus calibration was normal and no hiatal hernia was detected.',
        'A small hiatal hernia is possible.',
    ),
    'Lymphadenopathy': (
        'Lymph nodes that did not reach pathological size were observed in the mediastinum.',
        'No enlarged lymph nodes were detected in prevascular, pre-paratracheal, subcarinal regions.',
        'Cystic lesions in the left hilar region, suspicious for metastatic lymph nodes.',
    ),
    'Emphysema': (
        'Paraseptal emphysematous changes are observed in the apex of both lungs.',
        'No emphysematous change was observed in the lungs.',
        'Mild emphysema may be present in both upper lobes.',
    ),
    'Atelectasis': (
        'Subsegmental atelectasis is observed in the lower lobes of both lungs.',
        'No atelectasis was detected.',
        'Atelectasis may be present in the right lower lobe.',
    ),
    'Lung nodule': (
        'A 5 mm nodule is observed in the superior segment of the right lung lower lobe.',
        'No nodular or infiltrative lesion is detected in the lung parenchyma.',
        'A nodule cannot be ruled out in the left upper lobe.',
    ),
    'Lung opacity': (
        'Patchy ground glass density increases are observed in both lungs.',
        'No ground-glass opacity was detected in the lung parenchyma.',
        'Ground glass areas suspicious for infection are observed in the right lung.',
    ),
    'Pulmonary fibrotic sequela': (
        'Linear fibrotic sequela changes are observed in the right lung middle lobe.',
        'No fibrotic sequelae were observed.',
        'Linear densities in the lingula, possibly sequelae.',
    ),
    'Pleural effusion': (
        'Bilateral pleural effusion reaching 2 cm is observed.',
        'Pleural effusion-thickening was not detected in both hemithorax.',
        'A small left pleural effusion cannot be excluded.',
    ),
    'Mosaic attenuation pattern': (
        'Mosaic attenuation pattern is observed in both lungs.',
        'No mosaic attenuation pattern was observed.',
        'A mosaic pattern is questionable in both lungs.',
    ),
    'Peribronchial thickening': (
        'Peribronchial thickness increases are observed in the lower lobes of both lungs.',
        'There is no peribronchial thickening.',
        'Peribronchial thickening is suspected in the lower lobes.',
    ),
    'Consolidation': (
        'Consolidation areas with air bronchograms are observed in the left lower lobe.',
        'No pneumonic infiltration or consolidation area was detected in both lung parenchyma.',
        'Consolidation may be present in the right lower lobe.',
    ),
    'Bronchiectasis': (
        'Cylindrical bronchiectasis is observed in the right lung middle lobe.',
        'No bronchiectasis was detected.',
        'Possible bronchiectasis in the left lower lobe.',
    ),
    'Interlobular septal thickening': (
        'Interlobular septal thickening is observed in the lower lobes of both lungs.',
        'No interlobular septal thickening was observed.',
        'Interlobular septal thickening is suspected in the right lower lobe.',
    ),
}


@pytest.fixture(scope='module')
def labeler() -> RulesLabeler:
    return RulesLabeler()


def test_cases_cover_every_finding():
    assert set(CASES) == set(FINDINGS)


@pytest.mark.parametrize('finding', FINDINGS)
@pytest.mark.parametrize('which, expected', [(0, 1), (1, 0), (2, -1)])
def test_status_per_class(labeler, finding, which, expected):
    text = CASES[finding][which]
    labels = labeler.annotate('r', text).labels()
    assert labels[finding] == expected, text
    if expected == 0:
        item = next(e for e in labeler.annotate('r', text).findings if e.finding == finding)
        assert item.status is Status.ABSENT


def test_unmentioned_findings_are_omitted(labeler):
    ann = labeler.annotate(
        'r', 'Trachea and both main bronchi are open. Bone structures are natural.'
    )
    assert ann.findings == []
    assert set(ann.labels().values()) == {0}


@pytest.mark.parametrize(
    'text, finding, expected',
    [
        (
            'A hypodense nodule is observed in the right lobe of the thyroid gland.',
            'Lung nodule',
            0,
        ),
        ('Fibroatelectatic changes are observed in the left lower lobe.', 'Atelectasis', 0),
        (
            'Fibroatelectatic changes are observed in the left lower lobe.',
            'Pulmonary fibrotic sequela',
            1,
        ),
        ('Consolidation with air bronchograms in the right lower lobe.', 'Lung opacity', 0),
        ('Calcified atheroma plaques in the abdominal aorta.', 'Arterial wall calcification', 0),
        ('Calcific plaques in the aorta and coronary arteries.', 'Arterial wall calcification', 1),
        (
            'Calcific plaques in the aorta and coronary arteries.',
            'Coronary artery wall calcification',
            1,
        ),
        ('Minimal pericardial effusion is observed.', 'Pleural effusion', 0),
        ('A 4 mm intrapulmonary lymph node in the major fissure.', 'Lymphadenopathy', 0),
        ('Subcutaneous emphysema in the left chest wall.', 'Emphysema', 0),
        ('Mild subcapsular effusion is observed in the spleen.', 'Pleural effusion', 0),
        (
            'A new nodule, not observed in the previous examination, is seen in the lingula.',
            'Lung nodule',
            1,
        ),
        (
            'The pleural effusion on the left, which was observed in the previous examination, '
            'was not detected in the current examination.',
            'Pleural effusion',
            0,
        ),
        ('The right jugular catheter was removed.', 'Medical material', 0),
        ('Heart size is normal. Pericardial effusion was not observed.', 'Cardiomegaly', 0),
    ],
)
def test_conventions_and_exclusions(labeler, text, finding, expected):
    assert labeler.annotate('r', text).labels()[finding] == expected


@pytest.mark.parametrize(
    'text, finding, expected',
    [
        # Heart size said the other way round, and the cardiothoracic ratio given as a number.
        ('Increased heart size is noted.', 'Cardiomegaly', 1),
        ('The cardiothoracic ratio is above 0.5.', 'Cardiomegaly', 1),
        ('CTI > 50%.', 'Cardiomegaly', 1),
        ('The cardiothoracic ratio is within normal limits.', 'Cardiomegaly', 0),
        # Peribronchial thickening: sheath/interstitium wording, hyphen, density increase.
        (
            'Thickening and traction bronchiectasis along the peribronchial sheath.',
            'Peribronchial thickening',
            1,
        ),
        ('Peri-bronchial thickening in both lower lobes.', 'Peribronchial thickening', 1),
        (
            'A significant increase in peribronchovascular density is observed.',
            'Peribronchial thickening',
            1,
        ),
        (
            'Peribronchial and interlobular septal thickening in both lungs.',
            'Peribronchial thickening',
            1,
        ),
        # ... but not across a list that names other things.
        (
            'Septal thickening and peribronchovascular ground glass opacities.',
            'Peribronchial thickening',
            0,
        ),
        ('Peribronchovascular nodules and septal thickening.', 'Peribronchial thickening', 0),
        ('Wall thickening in the peribronchial lymph nodes.', 'Peribronchial thickening', 0),
        ('Thickened interlobular septa in both lungs.', 'Interlobular septal thickening', 1),
        ('Thickened septa in the lower lobes.', 'Interlobular septal thickening', 1),
        # Devices named by type.
        ('Chemoport in the right chest wall.', 'Medical material', 1),
        ('Pacing leads in the right ventricle.', 'Medical material', 1),
        ('Endoprosthesis in the descending aorta.', 'Medical material', 1),
        ('Osteosynthesis material in the right clavicle.', 'Medical material', 1),
        ('Omental implants are observed.', 'Medical material', 0),
        # Calcification placed in the coronaries is not arterial-wall (thoracic) calcification.
        (
            'Dilatation of the aorta, atheroma plaques in the coronary arteries.',
            'Arterial wall calcification',
            0,
        ),
        (
            'Atheroma plaques in the coronary arteries and aortic arch.',
            'Arterial wall calcification',
            1,
        ),
        # A coronary branch named "circumflex artery" is still a coronary artery (the synthetic
        # reports list the branches; this sentence gave 10 false arterial labels in the demo).
        (
            'Calcified plaques are observed in the coronary arteries (circumflex artery, right '
            'coronary artery).',
            'Arterial wall calcification',
            0,
        ),
        (
            'Calcified plaques are observed in the coronary arteries (right coronary artery, '
            'circumflex artery).',
            'Coronary artery wall calcification',
            1,
        ),
        (
            'Calcified plaques in the aortic arch and the circumflex artery.',
            'Arterial wall calcification',
            1,
        ),
        # "absent" and "X - no thickening was detected" negate.
        ('Pleural or pericardial effusion or absent.', 'Pericardial effusion', 0),
        ('Pericardial effusion - no thickening was detected.', 'Pericardial effusion', 0),
        # Effusion placed in the abdomen is not pleural; in the hemithorax it is.
        ('Effusion in the form of perirenal fringing is observed.', 'Pleural effusion', 0),
        ('Effusion in the right hemithorax, ascites in the abdomen.', 'Pleural effusion', 1),
        ('Bilateral pleural effusion and perihepatic fluid.', 'Pleural effusion', 1),
    ],
)
def test_conventions_added_for_unseen_phrasing(labeler, text, finding, expected):
    assert labeler.annotate('r', text).labels()[finding] == expected


@pytest.mark.parametrize(
    'text, finding, expected',
    [
        # A questioned aside in parentheses doubts a cause: the finding outside it is stated ...
        (
            'A mosaic pattern (small airway disease?) in both lungs.',
            'Mosaic attenuation pattern',
            1,
        ),
        (
            'Septal thickening in the lower lobes (cardiac failure?).',
            'Interlobular septal thickening',
            1,
        ),
        # ... and a finding named only as that questioned cause is not labelled.
        ('A soft tissue lesion in the splenic hilum (lymph node?).', 'Lymphadenopathy', 0),
        ('Linear densities in the lingula (sequelae? atelectasis?).', 'Atelectasis', 0),
        (
            'Linear densities in the lingula (sequelae? atelectasis?).',
            'Pulmonary fibrotic sequela',
            0,
        ),
        ('A nodule of 4 mm on the fissure (intrapulmonary lymph node?).', 'Lung nodule', 1),
        # Without parentheses the question still hedges the whole clause.
        ('Atelectasis in the right lower lobe?', 'Atelectasis', -1),
        # A verbless opener before ", no ..." is inside the negation.
        (
            'In the lymph node stations, no lymph node of pathological size is seen.',
            'Lymphadenopathy',
            0,
        ),
        ('In the mediastinum, there are lymph nodes under 1 cm.', 'Lymphadenopathy', 1),
        ('In the right lower lobe with atelectasis, no effusion is seen.', 'Atelectasis', 1),
        # A nodule of the pleura itself is not a lung nodule; subpleural and pleural-based ones are.
        ('A pleural nodule of 8 mm near the minor fissure.', 'Lung nodule', 0),
        ('Nodular lesions are seen in the pleura on the right.', 'Lung nodule', 0),
        ('A subpleural nodule of 3 mm in the left lower lobe.', 'Lung nodule', 1),
        ('A pleural-based nodule of 4 mm in the lingula.', 'Lung nodule', 1),
        # "could not be observed" and "no longer visible" negate; "could not be observed in the
        # previous examination" does not.
        ('Pleural effusion could not be observed.', 'Pleural effusion', 0),
        ('The nodule in the lingula is no longer visible.', 'Lung nodule', 0),
        (
            'A new nodule, which could not be observed in the previous examination, is seen.',
            'Lung nodule',
            1,
        ),
        # Spelling variants: hyphenated lymph-node, opacification, interseptal.
        ('Mediastinal lymph-nodes under 1 cm.', 'Lymphadenopathy', 1),
        ('An intrapulmonary lymph-node in the fissure.', 'Lymphadenopathy', 0),
        ('Opacification in the right lower lobe.', 'Lung opacity', 1),
        (
            'Intra- and interseptal thickening in both upper lobes.',
            'Interlobular septal thickening',
            1,
        ),
        ('Thickening of the interatrial septum.', 'Interlobular septal thickening', 0),
    ],
)
def test_asides_openers_negations_and_spellings(labeler, text, finding, expected):
    assert labeler.annotate('r', text).labels()[finding] == expected


@pytest.mark.parametrize(
    'text, finding, expected',
    [
        # Rule errors found by adjudicating every dev error (docs/results.md).
        (
            'Diaphragmatic hernia is observed at the level of the esophagogastric junction.',
            'Hiatal hernia',
            1,
        ),
        ('A right diaphragmatic hernia containing liver.', 'Hiatal hernia', 0),
        ('Pericardial minimal effusion was observed.', 'Pericardial effusion', 1),
        (
            'Thickening and tractional bronchiectasis appearances are observed along the'
            ' peribronchial sheath.',
            'Peribronchial thickening',
            1,
        ),
        (
            'Calcific plaques are observed in the ascending, arch, descending and abdominal aorta.',
            'Arterial wall calcification',
            1,
        ),
        (
            'Diffuse atherosclerotic changes are observed throughout the arterial system.',
            'Arterial wall calcification',
            0,
        ),
        (
            'Millimetric atherosclerotic changes are observed in the thoracic aorta.',
            'Arterial wall calcification',
            1,
        ),
        (
            'Atherosclerotic changes in the coronary arteries, dilatation of the ascending aorta.',
            'Arterial wall calcification',
            0,
        ),
        (
            'Metastatic nodule sizes are stable in anterior and posterior mediastinum.',
            'Lung nodule',
            0,
        ),
        ('Nodular lesions (metastases?) in the pleura in the right lung.', 'Lung nodule', 0),
        (
            'No suspicious space-occupying lesion is observed in mass or nodular structure.',
            'Lung nodule',
            0,
        ),
        (
            'An increase in density consistent with edema-infiltration in the pericolonic adipose'
            ' tissue.',
            'Lung opacity',
            0,
        ),
        (
            'A pleural effusion of 22 mm on the right, and linear density increases consistent with'
            ' compressive atelectasis in the adjacent lung parenchyma.',
            'Lung opacity',
            1,
        ),
        (
            'Sequela pleuroparenchymal bands, and areas of increased density consistent with'
            ' atelectasis in both lungs.',
            'Lung opacity',
            1,
        ),
        (
            'Pleuroparenchymal density increases in both apical segments.',
            'Pulmonary fibrotic sequela',
            1,
        ),
        ('No pleuroparenchymal change was observed.', 'Pulmonary fibrotic sequela', 0),
        (
            'Sequelae changes are observed in the 5th elevation on the right.',
            'Pulmonary fibrotic sequela',
            0,
        ),
        ('Diffuse ectasia is observed in bronchial structures in both lungs.', 'Bronchiectasis', 1),
        ('Bronchial ectasia in the lower lobes.', 'Bronchiectasis', 1),
        ('Ectasia of the ascending aorta.', 'Bronchiectasis', 0),
    ],
)
def test_phrasings_from_the_dev_adjudication(labeler, text, finding, expected):
    assert labeler.annotate('r', text).labels()[finding] == expected


@pytest.mark.parametrize(
    'text, finding',
    [
        ('Linear atlectasis in the middle lobe.', 'Atelectasis'),
        ('Subsegmental ateectasis in both lower lobes.', 'Atelectasis'),
        ('A condolidation area in the left lower lobe.', 'Consolidation'),
        ('Mediastinal lymphadeopathy.', 'Lymphadenopathy'),
        ('Cardiomeali is observed.', 'Cardiomegaly'),
        ('Centrilobular emphysemataous changes.', 'Emphysema'),
        ('Cylindrical bronchiectsis in the lingula.', 'Bronchiectasis'),
        ('Fibroic bands in the right apex.', 'Pulmonary fibrotic sequela'),
    ],
)
def test_one_letter_typos_in_key_words(labeler, text, finding):
    assert labeler.annotate('r', text).labels()[finding] == 1
    negated = labeler.annotate('r', 'No ' + text[0].lower() + text[1:]).labels()[finding]
    assert negated == 0


def test_typo_patterns_spare_other_words():
    import re

    from llm_labeling.lexicon import typos

    def hits(stem: str, word: str) -> bool:
        return re.fullmatch(typos(stem) + r'\w*', word) is not None

    assert hits('atelecta', 'atlectasis') and hits('atelecta', 'atelectic')
    assert not hits('emphysem', 'empyema')  # a pleural infection, not emphysema
    assert not hits('consolidat', 'considered')
    assert not hits('fibrotic', 'fibrosis') and not hits('fibrotic', 'fibroid')


def test_quotes_are_substrings_and_locations_parsed(labeler):
    text = (
        'Trachea, both main bronchi are open. Pericardial effusion-thickening was not observed. '
        'When examined in the lung parenchyma window; A 7x5 mm solid nodule is observed in the '
        'superior segment of the right lung lower lobe. Mild pleural effusion is observed on the left. '
        '" Nodule in the right lung lower lobe. " Left mild pleural effusion.'
    )
    ann = labeler.annotate('acc-1', text)
    assert isinstance(ann, ReportAnnotation) and ann.report_id == 'acc-1'
    for item in ann.findings:
        assert item.finding in FINDINGS
        assert item.quote and item.quote in text
    by_name = {e.finding: e for e in ann.findings}
    nodule = by_name['Lung nodule']
    assert nodule.status is Status.PRESENT
    assert nodule.location.side == 'right'
    assert nodule.location.region == 'superior segment of the right lung lower lobe'
    assert nodule.descriptors.size == '7x5 mm'
    effusion = by_name['Pleural effusion']
    assert (effusion.location.side, effusion.descriptors.severity) == ('left', 'mild')
    assert by_name['Pericardial effusion'].status is Status.ABSENT
    assert by_name['Pericardial effusion'].location.structure == 'pericardial'


def test_descriptors_extent_and_bilateral(labeler):
    ann = labeler.annotate('r', 'Diffuse ground glass opacities are observed in both lungs.')
    item = ann.findings[0]
    assert (item.finding, item.location.side, item.descriptors.extent) == (
        'Lung opacity',
        'bilateral',
        'diffuse',
    )


def test_each_finding_of_a_list_keeps_its_own_location(labeler):
    text = (
        'Calcific atheroma plaques in the aortic arch, mild pericardial effusion, a 5 mm nodule in '
        'the right lung lower lobe, bilateral diffuse ground glass opacities.'
    )
    by_name = {e.finding: e for e in labeler.annotate('r', text).findings}
    arterial = by_name['Arterial wall calcification']
    assert (arterial.location.structure, arterial.location.side, arterial.descriptors.size) == (
        'aortic arch',
        None,
        None,
    )
    assert by_name['Pericardial effusion'].descriptors.severity == 'mild'
    nodule = by_name['Lung nodule']
    assert (nodule.location.region, nodule.descriptors.size, nodule.descriptors.severity) == (
        'right lung lower lobe',
        '5 mm',
        None,
    )
    assert by_name['Lung opacity'].location.side == 'bilateral'
    intro = labeler.annotate(
        'r', 'In the superior segment of the left lung lower lobe, a 7 mm solid nodule is observed.'
    )
    assert intro.findings[0].location.region == 'superior segment of the left lung lower lobe'


def test_deterministic_and_batch(labeler):
    texts = [CASES[f][0] + ' ' + CASES[f][1] for f in FINDINGS]
    first = [labeler.annotate(str(i), t).model_dump() for i, t in enumerate(texts)]
    again = [RulesLabeler().annotate(str(i), t).model_dump() for i, t in enumerate(texts)]
    assert first == again
    batch = labeler.annotate_many([(str(i), t) for i, t in enumerate(texts)] + [('dup', texts[0])])
    assert [a.model_dump() for a in batch[:-1]] == first
    assert batch[-1].report_id == 'dup' and batch[-1].findings == batch[0].findings


def test_version_is_stable_string():
    assert RulesLabeler.version.startswith('rules-')
    assert RulesLabeler().version == RulesLabeler.version


def test_bad_text_names_report(labeler):
    with pytest.raises(TypeError, match="'r9'.*must be a string, not float"):
        labeler.annotate('r9', float('nan'))


def test_synthetic_report_sentences(labeler):
    """Every sentence `ctclip synth` writes for a finding reads back as that finding only."""
    from synth import reports
    from synth.findings import Finding

    desc = dict(
        count=2,
        size=9,
        kind='solid',
        severity='mild',
        locations=['aortic arch'],
        arteries=['LAD'],
        stations=['paratracheal'],
        side='bilateral',
        lobes=['right upper lobe'],
    )
    kinds = {
        'Medical material': ['pacemaker', 'sternotomy wires', 'port catheter', 'surgical clips']
    }
    for name in FINDINGS:
        for kind in kinds.get(name, ['cylindrical']):
            for certain in (True, False):
                finding = Finding(name, certain=certain, desc={**desc, 'kind': kind})
                for seed in range(3):
                    rng = np.random.default_rng(seed)
                    for text in (reports.positive if certain else reports.hedged)(finding, rng):
                        labels = labeler.annotate('s', text).labels()
                        want = {f: (1 if certain else -1) if f == name else 0 for f in FINDINGS}
                        assert labels == want, text
    for text in [t for options in reports.NEGATIONS.values() for t in options]:
        assert set(labeler.annotate('s', text).labels().values()) == {0}, text


def test_score_counts():
    gold = [dict.fromkeys(FINDINGS, 0) | {'Emphysema': 1}, dict.fromkeys(FINDINGS, 0)]
    pred = [
        dict.fromkeys(FINDINGS, 0) | {'Emphysema': -1},
        dict.fromkeys(FINDINGS, 0) | {'Emphysema': 1},
    ]
    result = rules_cv.score(gold, pred)
    emphysema = result['per_class']['Emphysema']
    assert (emphysema['precision'], emphysema['recall'], emphysema['support']) == (0.5, 1.0, 1)
    assert result['per_class']['Cardiomegaly']['f1'] == 0.0


def test_load_manual_rejects_missing_columns(tmp_path):
    path = tmp_path / 'bad.csv'
    path.write_text('AccessionNo,text\nA1,hello\n', encoding='utf-8')
    with pytest.raises(ValueError, match='bad.csv lacks the columns'):
        rules_cv.load_manual(path)
    with pytest.raises(ValueError, match='split must be one of'):
        rules_cv.load_manual(path, 'test')


def test_errors_only_for_dev(capsys):
    with pytest.raises(SystemExit):
        rules_cv.main(['--manual', 'm.csv', '--split', 'heldout', '--errors', 'Emphysema'])
    assert 'only allowed with --split dev' in capsys.readouterr().err


def test_manual_labels_path_is_a_required_flag(capsys):
    """An installed package has no clone beside it to find the data in."""
    with pytest.raises(SystemExit):
        rules_cv.main(['--split', 'heldout'])
    assert 'the following arguments are required: --manual' in capsys.readouterr().err


def test_heldout_split_is_fixed():
    assert [rules_cv.is_heldout(f'train_{i}') for i in range(8)] == [
        rules_cv.is_heldout(f'train_{i}') for i in range(8)
    ]
    share = np.mean([rules_cv.is_heldout(f'train_{i}') for i in range(4000)])
    assert 0.22 < share < 0.28


def test_real_manual_reports_heldout(tmp_path):
    """Held-out accuracy on CT-RATE's manual labels (reports never read while writing rules)."""
    path = shared_path('ctrate', 'manual_labels_train.csv')
    with path.open(newline='', encoding='utf-8') as handle:
        n_rows = sum(1 for _ in csv.DictReader(handle))
    assert n_rows == 800
    out = tmp_path / 'heldout.json'
    png = tmp_path / 'heldout.png'
    assert (
        rules_cv.main(
            [
                '--manual',
                str(path),
                '--split',
                'heldout',
                '--json',
                str(out),
                '--plot',
                str(png),
                '--bootstrap',
                '200',
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    result = json.loads(out.read_text(encoding='utf-8'))
    assert result['n_reports'] == 190
    low, high = result['macro_f1_ci95']
    assert low <= result['macro_f1'] <= high
    per_class = {name: c['f1'] for name, c in result['per_class'].items()}
    # Measured 2026-11-22 (see docs/results.md); the target is 0.97 / 0.90.
    assert result['macro_f1'] >= HELDOUT_MACRO_FLOOR, result['macro_f1']
    assert min(per_class.values()) >= HELDOUT_CLASS_FLOOR, per_class


HELDOUT_MACRO_FLOOR = 0.95  # measured 0.956
HELDOUT_CLASS_FLOOR = 0.80  # measured 0.821 (Peribronchial thickening)


def test_label_consistency_counts_mixed_groups(labeler):
    """Same deciding sentence with both labels is counted; a negated or unique one is not."""
    empty = dict.fromkeys(FINDINGS, 0)
    rows = [
        ('a', 'Emphysematous changes in both lungs.', 1),
        ('b', 'Emphysematous changes in both lungs.', 1),
        ('c', 'Emphysematous changes in both lungs!', 0),
        ('d', 'No emphysema.', 0),
        ('e', 'No emphysema.', 0),
        ('f', 'Bullae in the right apex.', 1),
    ]
    reports = [rules_cv.ManualReport(a, t, empty | {'Emphysema': y}) for a, t, y in rows]
    annotations = labeler.annotate_many((r.accession, r.text) for r in reports)
    result = rules_cv.label_consistency(reports, annotations)
    assert (result['groups'], result['reports'], result['mixed_groups']) == (1, 3, 1)
    assert result['minority_labels'] == 1
    assert result['mixed'] == [
        {
            'finding': 'Emphysema',
            'quote': 'emphysematous changes in both lungs',
            'n': 3,
            'positive': 2,
        }
    ]


def test_consistency_only_for_dev(capsys):
    with pytest.raises(SystemExit):
        rules_cv.main(['--manual', 'm.csv', '--split', 'heldout', '--consistency'])
    assert '--consistency is only allowed with --split dev' in capsys.readouterr().err


def test_adjudication_splits_errors_by_verdict():
    """One finding, four reports: a true positive, a gold error, a rule error and a judgement."""
    blank = dict.fromkeys(FINDINGS, 0)
    gold = [blank | {'Emphysema': g} for g in (1, 0, 1, 0)]
    pred = [blank | {'Emphysema': p} for p in (1, 1, 0, -1)]
    pred[0] = pred[0] | {'Cardiomegaly': 1}  # an error nobody has adjudicated
    verdicts = {
        ('a0', 'Emphysema'): 'judgement',  # no longer an error
        ('a1', 'Emphysema'): 'gold_error',
        ('a2', 'Emphysema'): 'rule_error',
        ('a3', 'Emphysema'): 'judgement',
    }
    readers = [('gold_error', 'gold_error'), ('rule_error', 'judgement')]
    adjudication = rules_cv.Adjudication(verdicts, readers)
    result = rules_cv.adjudicate(gold, pred, ['a0', 'a1', 'a2', 'a3'], adjudication)
    assert result['errors'] == {
        'gold_error': 1,
        'judgement': 1,
        'rule_error': 1,
        'unadjudicated': 1,
    }
    assert result['unadjudicated'] == [('a0', 'Cardiomegaly')]
    assert result['no_longer_errors'] == [('a0', 'Emphysema')]
    # Only Emphysema has positives, so each macro is its F1 over 18 classes.
    # As is: TP 1, FP 2, FN 1. Rule error fixed: TP 2, FP 2. Ceiling: TP 2, FP 1.
    # Against the adjudicated labels (a1 becomes 1): TP 2, FP 1, FN 1.
    expected = {
        'macro_f1': 0.4,
        'macro_f1_rule_errors_fixed': 2 / 3,
        'macro_f1_ceiling': 0.8,
        'macro_f1_vs_adjudicated': 2 / 3,
    }
    for key, f1 in expected.items():
        assert result[key] == pytest.approx(f1 / len(FINDINGS)), key
    assert result['readers']['agreement'] == 0.5


def test_cohen_kappa_matches_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    first = rng.choice(rules_cv.VERDICTS, 60).tolist()
    second = [a if rng.random() < 0.7 else rng.choice(rules_cv.VERDICTS) for a in first]
    pairs = list(zip(first, second, strict=True))
    assert rules_cv.cohen_kappa(pairs) == pytest.approx(cohen_kappa_score(first, second))
    assert rules_cv.cohen_kappa([('judgement', 'judgement')] * 3) == 1.0
    with pytest.raises(ValueError, match='no rows were read by both'):
        rules_cv.cohen_kappa([])


def test_load_adjudication_names_the_bad_line(tmp_path):
    path = tmp_path / 'verdicts.csv'
    path.write_text(
        'accession,finding,error,category,reason\n'
        'train_1,Emphysema,FP,gold_error,plain\n'
        'train_2,Emphysema,FP,maybe,unsure\n',
        encoding='utf-8',
    )
    with pytest.raises(
        ValueError, match=r"verdicts.csv line 3: a verdict must be one of .*'maybe'"
    ):
        rules_cv.load_adjudication(path)
    path.write_text(
        'accession,finding,error,category,reader_1,reader_2\n'
        'train_1,Emphysema,FP,gold_error,gold_error,judgement\n',
        encoding='utf-8',
    )
    with pytest.raises(ValueError, match="line 2: readers said .* must be 'judgement'"):
        rules_cv.load_adjudication(path)
    path.write_text('accession,finding\ntrain_1,Emphysema\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r"lacks the columns \['category'\]"):
        rules_cv.load_adjudication(path)


def test_adjudication_only_for_dev(capsys):
    with pytest.raises(SystemExit):
        rules_cv.main(['--manual', 'm.csv', '--split', 'heldout', '--adjudication'])
    assert 'only allowed with --split dev' in capsys.readouterr().err


def test_every_dev_error_is_adjudicated(tmp_path):
    """The shipped verdicts cover today's dev errors: a rule change that makes a new error must
    adjudicate it, so the ceiling in docs/results.md stays true."""
    path = shared_path('ctrate', 'manual_labels_train.csv')
    out = tmp_path / 'dev.json'
    args = ['--manual', str(path), '--split', 'dev', '--adjudication', '--bootstrap', '0']
    assert rules_cv.main([*args, '--json', str(out)]) == 0
    result = json.loads(out.read_text())['adjudication']
    assert result['unadjudicated'] == []
    assert result['errors'] == {
        'gold_error': 74,
        'judgement': 88,
        'rule_error': 6,
        'unadjudicated': 0,
    }
    assert result['macro_f1_rule_errors_fixed'] < 0.97 < result['macro_f1_ceiling']
    assert result['readers']['rows_read_by_both'] == 187
    assert result['readers']['cohen_kappa'] > 0.75
