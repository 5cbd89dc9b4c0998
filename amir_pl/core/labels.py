"""The instrument classes and the names they go by in other datasets."""

from omegaconf import OmegaConf

# Label order of the thesis's tables (Segal 2016, Tables 4.1 and 4.2).
CLASS_NAMES: tuple[str, ...] = (
    "electric_bass",
    "cello",
    "drums",
    "flute",
    "acoustic_guitar",
    "electric_guitar",
    "organ",
    "piano",
    "saxophone",
    "trumpet",
    "violin",
    "vocals",
)

# IRMAS's instrument codes (its training folders and its test annotations). Clarinet is not one of
# the thesis's 12 classes; it is listed so that a class list naming it works.
IRMAS_CODES: dict[str, str] = {
    "cel": "cello",
    "cla": "clarinet",
    "flu": "flute",
    "gac": "acoustic_guitar",
    "gel": "electric_guitar",
    "org": "organ",
    "pia": "piano",
    "sax": "saxophone",
    "tru": "trumpet",
    "vio": "violin",
    "voi": "vocals",
}

# Other spellings of a class: the IRMAS codes and a few common names.
ALIASES: dict[str, str] = {
    **IRMAS_CODES,
    "bass": "electric_bass",
    "drum": "drums",
    "voice": "vocals",
}


def canonical_name(name: str) -> str:
    """Map a folder name or alias ('gac', 'Acoustic Guitar') to its class name."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return ALIASES.get(key, key)


def irmas_code(name: str) -> str:
    """IRMAS's code for a class ('piano' -> 'pia'), or the class name where IRMAS has none ('drums')."""
    name = canonical_name(name)
    return next((code for code, known in IRMAS_CODES.items() if known == name), name)


# The class list in configs: ``classes: ${amir.classes:}`` (the thesis's 12, in its order).
OmegaConf.register_new_resolver("amir.classes", lambda: list(CLASS_NAMES), replace=True)
