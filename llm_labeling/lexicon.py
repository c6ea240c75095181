"""The rules labeler's knowledge as data: per-finding trigger patterns and the cue words.

Kept apart from the matching code in `llm_labeling.rules` so that a rule change is a data change,
and so that `RulesLabeler.version` can hash exactly this content. Patterns are case-insensitive
regular expressions matched inside one clause of a report.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_labeling.schema import FINDINGS


@dataclass(frozen=True)
class FindingPatterns:
    """How one finding is spoken of.

    Args:
        triggers: a match names the finding; its named group `t`, when present, is the word whose
            negation and hedging decide the status (e.g. the plaque in "aorta ... plaques").
        excludes: a trigger match that overlaps one of these is not the finding (e.g. a thyroid
            nodule is not a lung nodule).
    """

    triggers: tuple[str, ...]
    excludes: tuple[str, ...] = ()  # the named group `x`, when present, is the vetoed span


def typos(stem: str) -> str:
    """Every spelling one edit away from `stem` after its first letter (a letter dropped, added,
    changed or two swapped), as a regex. CT-RATE's English has such slips in key words
    ("atlectasis", "condolidation", "lymphadeopathy"); stems are 8+ letters, so no other word is
    one edit away. The fixed first letter and the length lookahead keep the search cheap."""
    head, tail = stem[0], stem[1:]
    variants = set()
    for i in range(len(tail) + 1):
        variants.add(tail[:i] + '[a-z]' + tail[i:])
        if i < len(tail):
            variants.add(tail[:i] + tail[i + 1 :])
            variants.add(tail[:i] + '[a-z]' + tail[i + 1 :])
        if i < len(tail) - 1:
            variants.add(tail[:i] + tail[i + 1] + tail[i] + tail[i + 2 :])
    variants.discard(tail)
    return f'{head}(?=[a-z]{{{len(tail) - 1}}})(?:' + '|'.join(sorted(variants)) + ')'


_NOT_LUNG = (
    r'(?:thyroid|adrenal\w*|liver|hepatic|renal|kidneys?|breasts?|spleen|splenic|pancrea\w*|gland'
    r'|mediastin\w*|mesenter\w*|vertebra\w*|trachea|bronchi|adipose|subcutaneous|axilla\w*|stomach)'
)

# Calcified plaque words, and the non-coronary thoracic arteries the manual labels count (a
# coronary branch, 'circumflex artery', 'left anterior descending artery', is not one of them).
# Atherosclerosis without a calcification word is positive in 1 of 4 dev reports: it counts for an
# artery wall only when placed in the thoracic aorta itself (a trigger of its own).
_WALL_CALC = r'calcifi\w+|calcific|atherom\w+|plaques?'
_CALC = _WALL_CALC + r'|atheroscleros\w+|atherosclerotic'
_ARTERY = (
    r'(?<!abdominal )aort(?:a|ic)(?! valve)|arcus|(?<!abdominal )aortic arch|carotid\w*|subclavian'
    r'|brachiocephalic|(?<!anterior )(?:ascending|descending)(?=[^.;]*\baorta\b)|(?<!coronary )(?<!descending )(?<!circumflex )(?<!iliac )(?<!pulmonary )arter(?:y|ies)|(?<!coronary )vascular|(?<!coronary )vessels?'
)

# A density increase is an opacity only where the clause places it in the lung.
_DENSITY_UP = r'density increase\w*|increase\w* (?:in|of) (?:\w+ )?density|increased density'
_LUNG_PLACE = (
    r'lungs?|lobes?|segments?|parenchyma\w*|lingul\w*|subpleural|apex|apices|apical|basal|bases'
)
_HEART = r'(?:heart|cardiac)(?: (?:size|sizes|dimensions?|contours?|volume|silhouette|shadow))?'
_CTR = r'cardio-?thoracic (?:index|ratio)|ctr|cti'
# Up to four words between 'peribronchial' and 'thickening', but not across a list ('septal
# thickening and peribronchovascular nodules' names two other things).
_GAP = r'(?: (?!and\b|or\b|with\b|nodul|lymph)[\w-]+){0,4}?'
_CORONARY_BRANCH = r'LAD|RCA|LCX|CX|circumflex|left anterior descending|left main coronary'

LEXICON: dict[str, FindingPatterns] = {
    'Medical material': FindingPatterns(
        triggers=(
            r'\bcatheter\w*',
            r'\bstent\w*',
            r'\bpacemaker\w*',
            r'\bsternotomy\b',
            r'\bcannula\w*',
            r'\bfixators?\b',
            r'\b(?:stent[- ])?grafts?\b',
            r'\bbreast (?:prosthe\w+|implants?)\b',
            r'\b(?:staples?|stapler)\b',
            r'\b(?:surgical|prosthetic|hernia) mesh\b',
            r'\bembolization (?:coils?|material)',
            r'\b(?:icd|defibrillator)\b',
            r'\bcardiac (?:valve )?(?:prosthe\w+|replacement)',
            r'\bvalve (?:prosthe\w+|replacement)',
            r'\bprosthetic (?:valve|heart valve)',
            r'\bwires?\b',
            r'\bclips?\b',
            r'\bprosthe\w+',
            r'\bport\b',
            r'\btubes?\b',
            r'\bcerclage\w*',
            r'\b(?:bone )?cement\b',
            r'\becmo\b',
            r'\bvertebroplast\w*|\bkyphoplast\w*',
            r'\btracheostomy\b',
            r'\bintubat\w+',
            r'\bdrain\w*\b',
            r'\bsutures?\b(?! compression)',
            r'\bmetal\w*',
            r'\bcoils?\b',
            r'\belectrodes?\b',
            r'\bscrews?\b',
            r'\bcabg\b',
            r'\bbypass graft\w*',
            r'\bvalve replacement\b',
            r'\bsurgical material\w*',
            r'\bforeign bod(?:y|ies)\b',
            r'\bfixation material\w*',
            r'\bdevice\w*',
            r'\b(?:ivc|vena cava|caval) filter\b|\bfilter (?:in|within) the (?:inferior )?vena cava',
            r'\bcardiac valves?\b(?=.*\b(?:prosthe|replace|operat))',
            r'\b(?:chemo-?port|picc)\b',
            r'\b(?:osteosynthesis|fixation) (?:material|plates?)\w*',
            r'\bendoprosthe\w*',
            r'\b(?:pacing|pacemaker|pace|defibrillator) leads?\b',
            r'\bannuloplasty\w*|\bvalve ring\b',
            r'\b(?:silicone|mammary) (?:implants?|prosthe\w+)',
        ),
        # A catheterization is a procedure, not a device left in the patient.
        excludes=(
            r'\bcatheteri[sz]ation\b',
            r'\b(?:venous|lymphatic|bronchial) (?P<x>drainage)\b(?! (?:catheter|tube))',
        ),
    ),
    'Arterial wall calcification': FindingPatterns(
        triggers=(
            rf'\b(?:{_WALL_CALC})\b(?=[^.;]*\b(?:{_ARTERY})\b)',
            rf'\b(?:{_ARTERY})\b[^.;]*?\b(?P<t>{_WALL_CALC})\b',
            # Atherosclerosis placed in the thoracic aorta itself.
            r'\batheroscler\w*(?: \w+){0,4} (?:in|of|on) the (?:walls? of the )?(?:thoracic |ascending |descending )?'
            r'(?:aorta|aortic arch|arcus aorta)\b(?! valve)',
        ),
        excludes=(
            rf'\b(?P<x>{_CALC})\b(?: \w+){{0,2}} (?:in|of|on) (?:the )?(?:walls? of (?:the )?)?coronar\w*'
            rf'(?![^.;]*\b(?:{_ARTERY})\b)',
        ),
    ),
    'Cardiomegaly': FindingPatterns(
        triggers=(
            r'\bcardiomegal\w*',
            rf'\b{typos("cardiomegal")}\w*',
            rf'\b{_HEART},? (?:(?!chamber|cavit|atri|ventric|valv)[\w-]+ ){{0,3}}?(?:increased|enlarged|larger|bigger)\b',
            rf'\b(?:increase\w*|enlargement) (?:in|of) (?:the )?{_HEART}',
            r'\benlarged (?:heart|cardiac)\b|\bcardiac enlargement\b',
            rf'\b(?:{_CTR})\b(?: [\w-]+){{0,5}}? increas\w*',
            rf'\bincreas\w*(?: [\w-]+){{0,3}}? (?:{_CTR})\b',
            r'\b(?:increased|enlarged) (?:heart|cardiac) (?:size|sizes|dimensions?|volume|silhouette|shadow)\b',
            rf'\b(?:{_CTR})\b(?: (?:is|was|of|measured|measuring))? ?(?:above|over|greater than|more than|exceed\w*|>)'
            r' ?(?:0?[.,]5\d*|50 ?%|%50|50)',
        ),
    ),
    'Pericardial effusion': FindingPatterns(
        triggers=(
            r'\bpericardial (?:(?:minimal|mild|slight|small|little|trace|moderate|marked) )?(?:effusion|fluid)\w*',
            r'\b(?:effusion|fluid) (?:\w+ )?(?:in|within) the pericard\w*',
            r'\bpericardial effusion-thickening\b',
            r'\b(?:effusion|fluid)\w*\b(?=[^.;]*\bpericard\w*)',
            r'\bpericard\w* thickening-(?:\w+ )?effusion\b',
        ),
    ),
    'Coronary artery wall calcification': FindingPatterns(
        triggers=(
            r'\bcoronary\b[^.;]*\bcalcifi\w+',
            r'\bcalcifi\w+[^.;]*\bcoronary\b',
            r'\bcoronary\b[^.;]*\b(?:plaques?|atherom\w+|atheroscleros\w+)',
            r'\b(?:plaques?|atherom\w+)[^.;]*\bcoronary\b',
            rf'\b(?:{_CORONARY_BRANCH})\b[^.;]*\b(?:{_CALC})',
            rf'\b(?:{_CALC})\b[^.;]*\b(?:{_CORONARY_BRANCH})\b',
        ),
    ),
    'Hiatal hernia': FindingPatterns(
        triggers=(
            r'\bhiatal? hernia\w*',
            r'\bhiatus hernia\w*',
            r'\bsliding (?:type )?hernia\w*',
            # A diaphragmatic hernia at the oesophageal hiatus is a hiatal hernia by another name.
            r'\bdiaphragmatic hernia\w*(?=[^.;]*\b(?:esophag\w*|oesophag\w*|gastro-?esophageal|hiatus))',
        ),
    ),
    'Lymphadenopathy': FindingPatterns(
        triggers=(
            r'\blymph[- ]?nodes?\b',
            r'\blymphadenopath\w+',
            r'\blymphadenomegal\w+',
            rf'\b{typos("lymphadenopath")}\w*',
            r'\badenopath\w+',
            r'\blaps?\b',
        ),
        excludes=(
            r'\b(?:intrapulmonary|subpleural|intraparenchymal|fissural|perifissural) (?P<x>lymph[- ]?nodes?)',
        ),
    ),
    'Emphysema': FindingPatterns(
        triggers=(
            r'\bemphysem\w+',
            r'\bbullae?\b',
            r'\bbullous\b',
            r'\bblebs?\b',
            rf'\b{typos("emphysem")}\w*',
        ),
        excludes=(r'\bsubcutaneous emphysema\b',),
    ),
    'Atelectasis': FindingPatterns(
        triggers=(r'\batelecta\w+', r'\bdystelecta\w+', rf'\b{typos("atelecta")}\w*'),
        excludes=(r'\bfibro[- ]?(?P<x>atelecta\w+)',),
    ),
    'Lung nodule': FindingPatterns(
        triggers=(
            r'\bnodules?\b',
            r'\bmicronodul\w*',
            r'\bnodular (?:(?:or|and) \w+ )?(?:lesions?|formations?|opacit\w+|densit\w+|appearances?|structures?)',
        ),
        excludes=(
            rf'\b{_NOT_LUNG}\b[^.;]*\b(?P<x>nodul\w*)',
            rf'\b(?P<x>nodul\w*)\b[^.;]*\b(?:in|of|on) (?:the )?(?:\w+ ){{0,3}}{_NOT_LUNG}\b',
            r'\bschmorl\w* nodul\w*|\bhypodense nodul\w*',
            # 'No ... lesion is observed in mass or nodular structure' describes the lesion's shape.
            r'\bin mass or (?P<x>nodular structures?)',
            r'\bnodular densit\w+ (?:increase|in the)',
            # A nodule of the pleura itself is not a lung nodule; subpleural/pleural-based ones are.
            r'(?<![-\w])pleural (?P<x>nodul\w*)',
            r'\b(?P<x>nodul\w*)(?: [\w()?-]+){0,3} (?:in|of|on) the pleura\b',
        ),
    ),
    'Lung opacity': FindingPatterns(
        triggers=(
            r'\bground[- ]glass\w*',
            r'\b(?:frosted|matte?|icy)[- ]glass\w*|\bicy density',
            r'\bopacit\w+',
            r'\bopacification\w*',
            r'\binfiltrat\w+',
            rf'\b(?:{_LUNG_PLACE})\b[^.;]*?(?P<t>{_DENSITY_UP})',
            rf'\b(?P<t>{_DENSITY_UP})(?=[^.;]*\b(?:{_LUNG_PLACE})\b)',
            r'\bdep[ae]nd[ae]nt (?:\w+ )?densit\w+',
        ),
        excludes=(
            r'\b(?:active )?infiltrat\w+ or mass|mass(?: lesion)?[- ](?:or )?(?:active )?infiltrat\w+',
            r'\bactive infiltrat\w+',
            r'\binfiltrat\w+ (?:into|the|of the) (?!lung|parenchyma)',
            r'\binfiltrating\b',
            r'\b(?P<x>infiltrat\w+)\b[^.;]*?\b(?:in|of|into) (?:the )?(?:\w+ )?'
            r'(?:adipose|fat\w*|pericolonic|mesenter\w*|subcutaneous|muscles?)\b',
            r'\b(?:centri)?acinar (?:nodular )?(?:opacit|infiltrat)\w*|\b(?:micro)?nodular (?:opacit|infiltrat|density)\w*',
            r'\b(?:sequela\w*|pleuroparenchymal|fibrotic|peribronchial|metal\w*'
            r'|consolidat\w+|consolidative|fat\w*|adipose|subcutaneous|perirenal|pericolonic|skin|bone|liver'
            r'|operative|vertebra\w*|soft tissue|mediastinum|pleural|pleura)\b(?:(?!ground|, and\b)[^.;])*'
            r'\b(?P<x>density increase\w*|increase\w* (?:in|of) (?:\w+ )?density|increased density)',
            r'\b(?P<x>density increase\w*|increase\w* (?:in|of) (?:\w+ )?density|increased density)\b[^.;]*'
            r'\b(?:sequela\w*|pleuroparenchymal|fibrotic|consolidat\w+|edema|fat\w*|thymic)',
            r'\b(?:in favor of|compatible with|consistent with|favors|suggest\w*|terms of|evaluated for|'
            r'belong to the early onset of) (?:\w+ ){0,2}(?P<x>(?:broncho)?pneumonic infiltrat\w+|infiltrat\w+)',
            r'\b(?P<x>ground[- ]glass)\b[^.;]*\b(?:regressed|disappeared|not observed in this)',
        ),
    ),
    'Pulmonary fibrotic sequela': FindingPatterns(
        triggers=(
            r'\bfibro(?:sis|tic|[- ]?atel\w+)\b',
            rf'\b{typos("fibrotic")}\b',
            r'\bsequela\w*',
            r'\bparenchymal bands?\b',
            # Pleuroparenchymal changes are fibrotic sequela: 72 of the 75 dev reports with the word are positive.
            r'\bpleuro-?parenchymal\b',
            r'\bscar\w*',
        ),
        excludes=(
            # '5th elevation' is a rib: Turkish 'kot' is both rib and elevation.
            r'\b(?:kidneys?|renal|perirenal|bone|ribs?|costa\w*|\d+(?:st|nd|rd|th) elevation|humerus|spleen|splenic|vertebra\w*|fracture\w*|'
            r'liver|hepatic|thyroid|breast|operation|postoperative)\b[^.;]*?(?P<x>sequela\w*|fibro\w+|scar\w*)',
            r'(?P<x>sequela\w*|fibro\w+|scar\w*)\b[^.;]*?\b(?:kidneys?|renal|bone|ribs?|\d+(?:st|nd|rd|th) elevation|humerus|spleen|vertebra\w*)\b',
            r'\b(?P<x>sequela\w*) of (?:a |an |the )?(?:previous |past |old )?(?:granulomatous|tb\b|tubercul)',
            r'\b(?:granulomatous \w+|tb|tuberculosis) (?P<x>sequela\w*)',
        ),
    ),
    'Pleural effusion': FindingPatterns(
        triggers=(
            r'\bpleural (?:effusion|fluid)\w*',
            r'\b(?:bilateral|right|left)\s+(?:\w+\s+)?effusion\w*',
            r'\beffusion\w*\b(?![^.;]*\bpericard)',
            r'\bpleural effusion-thickening\b',
            r'\bfluid\b(?= (?:\w+ ){0,3}(?:in|within|into) the (?:\w+ )?pleural (?:space|cavity))',
        ),
        excludes=(
            r'\bpericard\w*\b[^.;]*?(?P<x>effusion|fluid)',
            r'\b(?:abdom\w*|perirenal|perinephric|subcapsular|spleen|splenic|liver|hepatic|pelvi\w*|'
            r'ascites|joint|bursa\w*|perihepatic|perisplenic|intraabdominal)\b[^.;]*?(?P<x>effusion|fluid)',
            r'(?P<x>effusion)\w* (?:in|of) (?:the )?(?:abdom|perirenal|perinephric|subcapsular|pelvi|spleen|liver)',
            r'(?<!pleural )(?P<x>effusion|fluid)\w*\b(?![^.;]*(?:pleura|hemithora))[^.;,]*?\b(?:perirenal|perinephric|perihepatic'
            r'|perisplenic|pelvi\w*|intra-?abdominal|abdom\w*|subcapsular)\b',
        ),
    ),
    'Mosaic attenuation pattern': FindingPatterns(triggers=(r'\bmosaic\w*',)),
    'Peribronchial thickening': FindingPatterns(
        triggers=(
            rf'\bperibronch(?:ial|ovascular)\b{_GAP} (?:thick\w*|increase in thickness|cuff\w*)',
            rf'\bthick\w*\b{_GAP} peribronch(?:ial|ovascular)\b(?! (?:lymph|nodes?|nodul))',
            r'\bbronchial wall thicken\w*(?= \(peribronchial)',
            r'\bperibronch(?:ial|ovascular)(?: wall| interstitial)? (?:and|or) (?:interlobular |intralobular )?'
            r'(?:septal|interstitial|interlobular)\b[^.;,]{0,20}?thick\w*',
            r'\bperi-bronch(?:ial|ovascular)\b(?: [\w-]+){0,4}? (?:thick\w*|cuff\w*)',
            r'\b(?:thick\w*|calibration increase\w*)\b[^.;,]{0,80}?\bperibronch\w* (?:sheath|interstiti\w*)',
            r'\bperibronch(?:ial|ovascular) (?:\w+ )?(?:density increase\w*|increase\w* in density)',
            r'\bincrease\w* in (?:the )?peribronch(?:ial|ovascular) (?:\w+ )?density',
        ),
        excludes=(r'\bnormal (?P<x>thickness)\b',),
    ),
    'Consolidation': FindingPatterns(
        triggers=(r'\bconsolidat\w+', rf'\b{typos("consolidat")}\w*'),
    ),
    'Bronchiectasis': FindingPatterns(
        triggers=(
            r'\bbronchiecta\w+',
            rf'\b{typos("bronchiecta")}\w*',
            r'\bbronch\w* ectasi\w*|\bectasi\w*(?= (?:[\w-]+ ){0,4}(?:in|of) (?:the )?bronch)',
        ),
    ),
    'Interlobular septal thickening': FindingPatterns(
        triggers=(
            r'\bsepta\w*\b[^.;]{0,30}?\bthick\w*',
            r'\b(?:inter|intra)-?septa\w*\b[^.;]{0,30}?\bthick\w*',  # "interseptal thickening"
            r'\bthick\w*[^.;]{0,30}?\b(?:inter|intra)\w*[- ]?septa\w*',
            r'\binterlobular sept\w*',
            r'\bthickened (?:\w+ )?septa\b',
            r'\binterstiti\w* (?:thick\w*|elements?)',
            r'\bthick\w*[^.;]{0,40}?\binterstiti\w*',
        ),
        excludes=(
            r'\b(?:interatrial|interventricular|atrial|ventricular|nasal) (?P<x>sept\w*)',
            r'\bwithout (?:\w+ )?(?P<x>thick\w*) septa',
        ),
    ),
}

# Cue words. "Pre" cues negate what follows them up to the next verb phrase or clause end;
# "post" cues negate what precedes them back to the previous verb phrase or clause start.
NEGATION_PRE: tuple[str, ...] = (
    r'\bno\b',
    r'\bnot\b',
    r'\bwithout\b',
    r'\bneither\b',
    r'\bnor\b',
    r'\babsence of\b',
    r'\bfree of\b',
    r'\b(?:after|following|status post) (?:the )?removal of\b',
    r'\bnegative for\b',
)
NEGATION_POST: tuple[str, ...] = (
    r'\b(?:was|were|is|are|has been|have been)\s+not\s+\w+',
    r'\bnot\s+(?:be\s+)?(?:observed|detected|seen|identified|noted|found|present|visualized|monitored)\b',
    r'\b(?:(?:is|are|was|were) )?no longer (?:be )?(?:observed|detected|seen|identified|visible|visualized|present)\b',
    r'\b(?:is|are|was|were)\s+(?:within\s+|of\s+)?normal(?:\s+limits)?\b',
    r'\bnone\b',
    r'\b(?:or|is|are|was|were) absent\b',
    r'\bremoval\b',
    r'\s-\s+no (?:thickening|effusion) (?:was|were|is|are) (?:detected|observed|seen)\b',
)
# Cues that negate every trigger before them in the clause, across relative clauses such as
# "the effusion, which was observed in the previous examination, was not detected".
NEGATION_POST_STRONG: tuple[str, ...] = (
    r'\bnot (?:be )?(?:detected|observed|seen|visualized|identified) in (?:the|this) (?:current|present|last|recent)?\s*'
    r'(?:examination|study|scan|ct)',
    r'\b(?:was|were|has been|have been) (?:removed|taken out|extracted)\b',
    r'\b(?:previous|prior) (?:examination|study|scan|ct)\w*,? (?:is|are|was|were|has|have)(?: been)? not'
    r' (?:observed|detected|seen|visualized)\b',
    r'\b(?:completely|totally|fully) regressed\b',
    r'\bfull regression\b',
    r'\bdisappeared\b',
    r'\bresolved\b',
)
UNCERTAINTY: tuple[str, ...] = (
    r'\bsuspicious\b',
    r'\bsuspect\w*',
    r'\bpossibl[ey]\b',
    r'\bprobabl[ey]\b',
    r'\bquestionable\b',
    r'\bequivocal\b',
    r'\bmay\b',
    r'\bmight\b',
    r'\bcould\b',
    r'\bdifferential diagnosis\b',
    r'\?',
)
# Phrases that contain a negation word but negate nothing; masked before cues are searched.
PSEUDO_NEGATION: tuple[str, ...] = (
    r'\b(?:is|are|was|were|did|do|does)? ?not (?:\w+ )?(?:reach\w*|exceed\w*|pathologic\w*) ?(?:\w+ )?(?:in )?(?:size|dimensions?|sizes)?',
    r'\bnon-?pathologic\w*',
    r'\bno (?:significant |marked |remarkable )?(?:difference|change|progression|regression)\b',
    r'\b(?:did|does|do|has|have|had)? ?not (?:\w+ )?(?:change|differ)\w*',
    r'\b(?:could |can )?not (?:be )?(?:present|observed|detected|seen|visualized) (?:in|on) (?:the |his |her )?(?:previous|prior|old|last)\b',
    r'\bnot typical\b',
    r'\bnot only\b',
    r'\bnot (?:be )?(?:evaluated|assessed|characterized|distinguished|differentiated)\b',
)
# Hedges built from a negation word; checked before negation so they do not read as absent.
UNCERTAINTY_NEGATED: tuple[str, ...] = (
    r'\b(?:can ?not|could not|may not) be (?:ruled out|excluded|differentiated|distinguished)',
    r'\bnot (?:be )?(?:ruled out|excluded)\b',
)
# Verb phrases that close the scope of a "pre" negation cue.
VERB_PHRASE = r'\b(?:was|were|is|are|has been|have been|observed|detected|seen|noted|present)\b'
# Clause breakers inside a sentence.
CLAUSE_BREAK = (
    r';|,?\s+(?:but|however|although|though|whereas|while|except)\b'
    r'|,?\s+and\s+(?=(?:no|there|the|a|an)\b)|,\s+(?=(?:no|there)\b)'
)


def lexicon_fingerprint() -> str:
    """Every pattern in a stable text form: the input of `RulesLabeler.version`."""
    parts = [repr(sorted(LEXICON.items(), key=lambda kv: FINDINGS.index(kv[0])))]
    for group in (
        PSEUDO_NEGATION,
        NEGATION_PRE,
        NEGATION_POST,
        NEGATION_POST_STRONG,
        UNCERTAINTY,
        UNCERTAINTY_NEGATED,
        (VERB_PHRASE, CLAUSE_BREAK),
    ):
        parts.append(repr(group))
    return '\n'.join(parts)
