"""CT-RATE-style report text for a synthetic scan, written from the findings actually rendered.

Every present finding gets a sentence (stated as certain, or hedged when `certain` is False); an
absent finding is either negated explicitly or not mentioned, as in real reports. Sentences follow
the order of a chest CT read: devices, airways, mediastinum and heart, lymph nodes, lungs, pleura,
upper abdomen, bones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from synth.findings import Finding

NOT_GIVEN = 'Not given.'

CLINICAL = [
    'Cough.',
    'Shortness of breath.',
    'Fever and cough for one week.',
    'Follow-up of a lung nodule.',
    'Chest pain.',
    'Dyspnea.',
    'Malignancy screening.',
    'COVID-19 suspicion.',
    'Preoperative evaluation.',
]
TECHNIQUE = [
    'Non-contrast axial images of the thorax were obtained with {mm} mm slice thickness.',
    'Thorax CT without contrast, {mm} mm axial sections.',
    'Helical acquisition of the chest without intravenous contrast; {mm} mm reconstructions.',
]
HEDGES = [
    '{x} cannot be excluded.',
    'Findings suspicious for {x} are observed.',
    'Possible {x} is noted.',
    'An appearance that may be compatible with {x} was observed.',
]
NEGATIONS = {
    'Medical material': ['No foreign body or medical device was observed.'],
    'Arterial wall calcification': [
        'No atherosclerotic calcification was observed in the thoracic aorta.',
        'The thoracic aorta is of normal calibre without calcified plaques.',
    ],
    'Cardiomegaly': ['Heart contour and size are normal.', 'Heart size is within normal limits.'],
    'Pericardial effusion': [
        'Pericardial effusion-thickening was not observed.',
        'No pericardial effusion was detected.',
    ],
    'Coronary artery wall calcification': [
        'No calcification was detected in the coronary arteries.'
    ],
    'Hiatal hernia': [
        'Thoracic esophagus calibration was normal and no hiatal hernia was detected.'
    ],
    'Lymphadenopathy': [
        'No enlarged lymph nodes in pathological dimensions were detected in the mediastinum and hilar regions.',
        'No lymph node in pathological size and configuration was detected at the mediastinal and hilar level.',
    ],
    'Emphysema': ['No emphysematous change was observed in the lungs.'],
    'Atelectasis': ['No atelectasis was detected.'],
    'Lung nodule': [
        'No nodular lesion was detected in either lung.',
        'No pulmonary nodule was observed.',
    ],
    'Lung opacity': ['No ground-glass opacity was detected in the lung parenchyma.'],
    'Pulmonary fibrotic sequela': ['No fibrotic sequelae were observed.'],
    'Pleural effusion': [
        'No pleural effusion was observed.',
        'Pleural effusion-thickening was not detected.',
    ],
    'Mosaic attenuation pattern': ['No mosaic attenuation pattern was observed.'],
    'Peribronchial thickening': ['Bronchial walls are of normal thickness.'],
    'Consolidation': [
        'No consolidation was observed in either lung.',
        'No infiltrative lesion or consolidation was detected.',
    ],
    'Bronchiectasis': ['No bronchiectasis was detected.'],
    'Interlobular septal thickening': ['No interlobular septal thickening was observed.'],
}
INCIDENTAL = {
    'hepatosteatosis': (
        'Hypodensity consistent with hepatosteatosis is observed in the liver.',
        'Hepatosteatosis.',
    ),
    'degenerative': (
        'Degenerative changes with osteophytes are observed in the thoracic vertebrae.',
        'Degenerative changes in the thoracic spine.',
    ),
    'thyroid': (
        'A hypodense nodule is observed in the right lobe of the thyroid gland.',
        'Thyroid nodule.',
    ),
    'renal cyst': (
        'A simple cyst is observed in the upper pole of the left kidney within the sections.',
        'Left renal cyst.',
    ),
    'gallstone': ('A calcified stone is observed in the gallbladder lumen.', 'Cholelithiasis.'),
}
ARTERIES = {
    'LAD': 'left anterior descending artery',
    'LCx': 'circumflex artery',
    'RCA': 'right coronary artery',
}
ORDER = (
    'Medical material',
    'Cardiomegaly',
    'Pericardial effusion',
    'Arterial wall calcification',
    'Coronary artery wall calcification',
    'Hiatal hernia',
    'Lymphadenopathy',
    'Emphysema',
    'Lung nodule',
    'Lung opacity',
    'Consolidation',
    'Atelectasis',
    'Pulmonary fibrotic sequela',
    'Mosaic attenuation pattern',
    'Peribronchial thickening',
    'Bronchiectasis',
    'Interlobular septal thickening',
    'Pleural effusion',
)


def _where(f: Finding) -> str:
    lobes = f.desc.get('lobes') or []
    if lobes:
        return 'in the ' + ' and '.join(lobes)
    return {
        'bilateral': 'in both lungs',
        'right': 'in the right lung',
        'left': 'in the left lung',
    }.get(f.desc.get('side', ''), 'in the lungs')


def _nodule(d: dict, w: str, pick: Callable) -> tuple[str, str]:
    if d['count'] > 1:
        text = f'{d["count"]} pulmonary nodules are observed {w}, the largest ({d["kind"]}) measuring {d["size"]} mm.'
    else:
        text = pick(
            [
                f'A {d["size"]} mm {d["kind"]} nodule is observed {w}.',
                f'A {d["kind"]} pulmonary nodule measuring {d["size"]} mm is observed {w}.',
            ]
        )
    return text, f'Lung nodule{"s" if d["count"] > 1 else ""} {w}, up to {d["size"]} mm.'


# Per finding: (description, where, pick) -> (Findings sentence, impression phrase).
SENTENCES: dict[str, Callable[[dict, str, Callable], tuple[str, str]]] = {
    'Medical material': lambda d, w, pick: (
        {
            'pacemaker': 'A cardiac pacemaker with its leads extending into the right heart chambers is observed.',
            'sternotomy wires': 'Metallic sternotomy wires are observed in the sternum.',
            'port catheter': 'A port catheter is observed in the right anterior chest wall, its tip in the superior vena cava.',
            'surgical clips': 'Metallic surgical clips are observed in the mediastinum.',
        }[d['kind']],
        f'{d["kind"].capitalize()} (medical material).',
    ),
    'Cardiomegaly': lambda d, w, pick: (
        pick(
            [
                'Heart size increased.',
                f'Cardiomegaly is observed ({d["severity"]}).',
                'The heart is enlarged (cardiomegaly).',
            ]
        ),
        'Cardiomegaly.',
    ),
    'Pericardial effusion': lambda d, w, pick: (
        f'Pericardial effusion reaching {d["size"]} mm in thickness at its widest point is observed.',
        'Pericardial effusion.',
    ),
    'Arterial wall calcification': lambda d, w, pick: (
        pick(
            [
                f'Atherosclerotic calcified plaques are observed in the {" and ".join(d["locations"])}.',
                f'Calcific atheroma plaques were noted in the wall of the {" and ".join(d["locations"])}.',
            ]
        ),
        'Atherosclerotic calcification of the aorta.',
    ),
    'Coronary artery wall calcification': lambda d, w, pick: (
        f'Calcified plaques are observed in the coronary arteries ({", ".join(ARTERIES[a] for a in d["arteries"])}).',
        'Coronary artery calcification.',
    ),
    'Hiatal hernia': lambda d, w, pick: (
        pick(
            [
                f'A sliding type hiatal hernia measuring {d["size"]} mm is observed at the lower end of the esophagus.',
                'Hiatal hernia is observed.',
            ]
        ),
        'Hiatal hernia.',
    ),
    'Lymphadenopathy': lambda d, w, pick: (
        f'Enlarged lymph nodes are observed in the {", ".join(d["stations"])} region(s), the largest with a short axis of {d["size"]} mm.',
        'Mediastinal lymphadenopathy.',
    ),
    'Emphysema': lambda d, w, pick: (
        f'{d["severity"].capitalize()} {d["kind"]} emphysematous changes are observed, predominantly in the upper lobes of both lungs.',
        'Emphysema.',
    ),
    'Lung opacity': lambda d, w, pick: (
        pick(
            [
                f'Ground-glass opacities are observed {w}.',
                f'Patchy ground glass density increases are observed {w}.',
            ]
        ),
        f'Ground-glass opacity {w}.',
    ),
    'Consolidation': lambda d, w, pick: (
        pick(
            [
                f'Consolidation with air bronchograms is observed {w}.',
                f'Areas of consolidation are observed {w}.',
            ]
        ),
        f'Consolidation {w}.',
    ),
    'Atelectasis': lambda d, w, pick: (
        f'{d["kind"].capitalize()} atelectasis is observed {w}.',
        f'Atelectasis {w}.',
    ),
    'Pulmonary fibrotic sequela': lambda d, w, pick: (
        pick(
            [
                f'Fibrotic sequelae bands are observed {w}.',
                f'Linear fibrotic sequela changes are observed {w}.',
            ]
        ),
        f'Fibrotic sequelae {w}.',
    ),
    'Mosaic attenuation pattern': lambda d, w, pick: (
        'A mosaic attenuation pattern is observed in both lungs.',
        'Mosaic attenuation pattern.',
    ),
    'Peribronchial thickening': lambda d, w, pick: (
        pick(
            [
                'Peribronchial thickening is observed in both lungs.',
                'Bronchial wall thickening (peribronchial thickening) is observed bilaterally.',
            ]
        ),
        'Peribronchial thickening.',
    ),
    'Bronchiectasis': lambda d, w, pick: (
        f'{d["kind"].capitalize()} bronchiectasis is observed {w}.',
        f'Bronchiectasis {w}.',
    ),
    'Interlobular septal thickening': lambda d, w, pick: (
        'Interlobular septal thickening is observed in the peripheral parts of the lower lobes of both lungs.',
        'Interlobular septal thickening.',
    ),
    'Pleural effusion': lambda d, w, pick: (
        f'{d["severity"].capitalize()} pleural effusion is observed on the {"both sides" if d["side"] == "bilateral" else d["side"] + " side"}, '
        f'measuring {d["size"]} mm at its deepest point.',
        f'{"Bilateral" if d["side"] == "bilateral" else d["side"].capitalize()} pleural effusion.',
    ),
}
SENTENCES['Lung nodule'] = _nodule


def positive(f: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """(Findings sentence, impression phrase) for a present finding, stated with certainty."""

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    return SENTENCES[f.name](f.desc, _where(f), pick)


TERMS = {
    'Medical material': 'medical device',
    'Arterial wall calcification': 'aortic wall calcification',
    'Cardiomegaly': 'cardiomegaly',
    'Pericardial effusion': 'pericardial effusion',
    'Coronary artery wall calcification': 'coronary artery calcification',
    'Hiatal hernia': 'hiatal hernia',
    'Lymphadenopathy': 'lymphadenopathy',
    'Emphysema': 'emphysema',
    'Atelectasis': 'atelectasis',
    'Lung nodule': 'pulmonary nodule',
    'Lung opacity': 'ground-glass opacity',
    'Pulmonary fibrotic sequela': 'fibrotic sequelae',
    'Pleural effusion': 'pleural effusion',
    'Mosaic attenuation pattern': 'mosaic attenuation pattern',
    'Peribronchial thickening': 'peribronchial thickening',
    'Consolidation': 'consolidation',
    'Bronchiectasis': 'bronchiectasis',
    'Interlobular septal thickening': 'interlobular septal thickening',
}


def hedged(f: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """An uncertain statement of a present finding ('possible', 'cannot be excluded')."""
    hedge = HEDGES[int(rng.integers(len(HEDGES)))].format(
        x=TERMS[f.name] + ' ' + _where(f) if f.desc.get('lobes') else TERMS[f.name]
    )
    hedge = hedge[0].upper() + hedge[1:]
    return hedge, f'Possible {TERMS[f.name]}.'


def write_report(
    findings: dict[str, Finding],
    incidental: list[str],
    slice_mm: float,
    rng: np.random.Generator,
    sentences_out: dict[str, str] | None = None,
) -> dict[str, str]:
    """The four CT-RATE text columns for one scan; `sentences_out` receives each present
    finding's Findings sentence (the grounding truth's text); it draws nothing from `rng`."""
    sentences, impressions = [], []
    if 'Medical material' not in findings and rng.random() < 0.3:
        sentences.append(NEGATIONS['Medical material'][0])
    sentences.append(
        ['Trachea and both main bronchi are open.', 'Trachea, both main bronchi are open.'][
            int(rng.integers(2))
        ]
    )
    lung_started = False
    for name in ORDER:
        if name in ('Emphysema',) and not lung_started:
            sentences.append('When examined in the lung parenchyma window;')
            lung_started = True
        if name == 'Medical material' and name not in findings:
            continue
        f = findings.get(name)
        if f is not None:
            text, imp = positive(f, rng) if f.certain else hedged(f, rng)
            sentences.append(text)
            if sentences_out is not None:
                sentences_out[name] = text
            impressions.append(imp)
        elif name != 'Medical material' and rng.random() < 0.65:
            options = NEGATIONS[name]
            sentences.append(options[int(rng.integers(len(options)))])
    for key in incidental:
        sentences.append(INCIDENTAL[key][0])
        impressions.append(INCIDENTAL[key][1])
    sentences.append(
        [
            'Vertebral corpus heights are preserved.',
            'Bone structures in the study area are natural.',
        ][int(rng.integers(2))]
    )
    if not findings:
        impressions.insert(
            0,
            ['Thorax CT examination within normal limits.', 'Findings within normal limits.'][
                int(rng.integers(2))
            ],
        )
    clinical = NOT_GIVEN if rng.random() < 0.5 else CLINICAL[int(rng.integers(len(CLINICAL)))]
    technique = (
        NOT_GIVEN
        if rng.random() < 0.3
        else TECHNIQUE[int(rng.integers(len(TECHNIQUE)))].format(mm=f'{slice_mm:g}')
    )
    return {
        'ClinicalInformation_EN': clinical,
        'Technique_EN': technique,
        'Findings_EN': ' '.join(sentences),
        'Impressions_EN': ' '.join(impressions) if impressions else NOT_GIVEN,
    }
