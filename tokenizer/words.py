"""The gpt1 style's word splits: the original text encoder's `text_standardize` and spaCy's English
rules, as `tokenizers` normalisers and regex pre-tokenisers, so `tokenizer.json` alone applies them.

The original put spaces around runs of `- ~ ! " ; ? + , ( ) \\ / * [ ] { } | _`, then let spaCy split
each space-separated chunk: prefixes off the front, suffixes off the back, infixes inside what is
left, and whole-chunk special cases (`can not`, `do n't`, `Mr.`). Here:

1. the normaliser standardises characters, makes each newline run one newline, strips the text,
   splits `.` between a lower-case and an upper-case letter (spaCy's one rule that needs the case),
   and lower-cases;
2. whitespace separates chunks; every newline is a word;
3. the standardised marks stand alone: runs of `- ~ \\ / |` stay whole (spaCy keeps them), the
   others split into single marks (spaCy splits `__`, `**`, `!!`);
4. one regex walks each chunk left to right: the first part of a two-part special case (`can|not`,
   `do|n't`, `5|pm`), a suffix (when only suffixes follow), a protected special case (`mr.`,
   `e.g.`, `'em`), a prefix, an infix, or else the core up to the next infix or the suffixes.

`python -m bench.tokenizer_fidelity` measures the agreement with spaCy; README.md lists what still differs.
"""

from __future__ import annotations

from tokenizers import Regex, normalizers, pre_tokenizers

# Characters the original's text_standardize and ftfy rewrite (ftfy runs before, where text enters).
REPLACE = {"—": "-", "–": "-", "―": "-", "…": "...", "´": "'", "‘": "'", "’": "'", "“": '"', "”": '"'}

# spaCy's quotes and punctuation that survive step 2 (`,;!?()[]{}_*"` are already alone).
QUOTES = "'`‚„»«「」『』（）〔〕【】《》〈〉⟦⟧"
PUNCT = ":<>#&。？！，、；：～·।،۔؛٪¿؟¡"
CURRENCY = "$£€¥฿₽﷼₴₠-₿"
UNITS = (
    "km² km³ km kmh cm² cm³ cm mm² mm³ mm dm² dm³ dm m² m³ mbar mb mg mph µm µg nm kg kb gb tb ha yd in ft "
    "lb oz g t m %"
)

STANDARDIZED = r"\n|-+|~+|\\+|/+|\|+|[!\";?+,()*\[\]{}_]"

# One suffix token; spaCy strips these from the end of a chunk.
SUFFIX = (
    rf"''|'s|\.\.+|[{QUOTES}{PUNCT}\p{{So}}]|(?<=[0-9])(?:{'|'.join(UNITS.split())}|[{CURRENCY}])"
    rf"|(?<=[0-9\p{{Ll}}\p{{Lo}}%²+\-{QUOTES}{PUNCT}])\."
)
# Kept whole although they end (or start) with a suffix (or prefix): spaCy's special cases, as
# they are written in running text (`Mr.` is one, `mr.` is not, but both lower-case alike).
PROTECTED = (
    r"[a-zäöü]\.|(?:[a-z]\.){2,}|ph\.d\.|(?:1[0-2]|[1-9])[ap]\.m\.|v\.s\.|vs\."
    r"|(?:adm|ala|apr|ariz|aug|bros|calif|colo|conn|corp|dr|feb|fla|gov|inc|jan|jr|jul|jun|kans|ltd|messrs"
    r"|mich|minn|mr|mrs|ms|mt|nebr|nov|oct|okla|prof|sept|st|tenn)\."
    r"|'(?:bout|cause|cos|coz|cuz|d|em|ll|m|nuff|re|s|ve)|(?:doin|goin|havin|lovin|nothin|nuthin|somethin|ol)'"
    r"|ma'am|:[pox013>]|<3+|=3|>\.[<>]|<\.<|[0o]\.[0o]|v\.v"
)
PREFIX = rf"''|\.\.+|[§%={QUOTES}{PUNCT}{CURRENCY}\p{{So}}]"
INFIX = (
    rf"\.\.+|\p{{So}}|(?<=[0-9])\^(?=[0-9-])|(?<=[\p{{L}}0-9])[:<>=](?=\p{{L}})"
    rf"|(?<=[\p{{Ll}}{QUOTES}])\.(?=[{QUOTES}])"
)
# The one rule that needs the case lower-casing loses: spaCy splits `os.Path`, not `os.path`, nor
# a host name (its URL rule: dotted names that end in a lower-case top-level domain, `yarl.URL.build`).
HOST_END = r"\.\p{Ll}{2,63}(?::\d{2,5})?(?:#\S*)?[.'`:>]*(?:[\s!\";?+,()*\[\]{}_~\\/|-]|$)"
CASED_INFIX = rf"(?<=[\p{{Ll}}{QUOTES}])\.(?=\p{{Lu}})(?![\p{{L}}\p{{N}}]*(?:\.[\p{{L}}\p{{N}}]+)*?{HOST_END})"
ENDING = rf"(?:{SUFFIX})*$"

# Special cases that spaCy splits in two, written as the first part and what must follow it.
NOT_STEMS = "ai are ca could dare did does do had has have is may might must need ought sha should was were wo would"
CLITICS = {  # stems: the endings spaCy splits off them (it leaves `ill`, `its`, `shed`, `well`, `were` whole)
    "he": "'d 'll 's d s",
    "i": "'d 'll 'm 've d m ve",
    "it": "'d 'll 's d ll",
    "she": "'d 'll 's s",
    "that this": "'d 'll 's d ll s",
    "we": "'d 'll 're 've d ve",
    "who": "'d 'll 're 's 've d ll s ve",
    "let": "'s",
    "could might must should would not": "'ve ve",
    "these they those you": "'d 'll 're 've d ll re ve",
    "how there what when where why": "'d 'll 're 's 've d ll re s ve",
}
PAIRS = {"can": "not", "gon": "na", "got": "ta", "c'm": "on", "y'": "all", "y": "all", "'": "''"}


def _two_part() -> str:
    """The first part of a two-part special case at the start of a chunk, when the rest follows."""
    rules = [rf"(?:{'|'.join(NOT_STEMS.split())})(?=n'?t{ENDING})"]
    rules += [rf"(?:1[0-2]|[1-9])(?=[ap]m{ENDING}|[ap]\.m\.{ENDING})"]  # 5pm, 10a.m.
    rules += [rf"{first}(?={rest}{ENDING})" for first, rest in PAIRS.items()]
    for stems, ends in CLITICS.items():
        rules.append(rf"(?:{'|'.join(stems.split())})(?=(?:{'|'.join(ends.split())}){ENDING})")
    return rf"\A(?:{'|'.join(rules)})"


# One chunk's words, left to right: the first alternative that matches where the last word ended.
CHUNK = (
    rf"{_two_part()}"
    r"|\A(?:[\p{L}\p{M}]+|\p{N}+)$"  # the common case, early: a chunk of letters alone, or of digits
    rf"|(?:{SUFFIX})(?={ENDING})|(?:{PROTECTED})(?={ENDING})|{PREFIX}|{INFIX}"
    rf"|(?>[\p{{L}}\p{{M}}]+|\p{{N}}+|[^\s])+?(?=(?:{INFIX})|{ENDING})"  # the core, a run at a time
)


def normalizer() -> normalizers.Normalizer:
    """Step 1 of the module docstring, after NFC."""
    return normalizers.Sequence(
        [normalizers.NFC()]
        + [normalizers.Replace(a, b) for a, b in REPLACE.items()]
        + [normalizers.Replace(Regex(r"\s*\n\s*"), "\n"), normalizers.Strip()]
        + [normalizers.Replace(Regex(CASED_INFIX), " . "), normalizers.Lowercase()]
    )


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Steps 2-4 of the module docstring; step 1 is the normaliser."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), "removed"),
            pre_tokenizers.Split(Regex(STANDARDIZED), "isolated"),
            pre_tokenizers.Split(Regex(CHUNK), "isolated"),
        ]
    )
