"""FLORES-200 language codes (``xxx_Xxxx``: ISO 639-3 language + ISO 15924 script) and checks.

``FLORES200`` holds 205 codes: the 202 of NLLB-200 (the language codes of the NLLB model and
tokenizer) plus the three spellings only the FLORES-200 data files use: ``arb_Latn``,
``min_Arab`` and ``sat_Olck`` (NLLB's tokenizer calls Santali ``sat_Beng``; the FLORES-200
files call it ``sat_Olck``; both are accepted). ``MEXMA_LANGUAGES`` is the 81-language subset
of the MEXMA paper (Table 13), the languages of ``shared/data/langmap.tsv``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from clse.errors import DataError

PIVOT = "eng_Latn"

FLORES200: frozenset[str] = frozenset({
    "ace_Arab", "ace_Latn", "acm_Arab", "acq_Arab", "aeb_Arab", "afr_Latn", "ajp_Arab", "aka_Latn",
    "als_Latn", "amh_Ethi", "apc_Arab", "arb_Arab", "arb_Latn", "ars_Arab", "ary_Arab", "arz_Arab",
    "asm_Beng", "ast_Latn", "awa_Deva", "ayr_Latn", "azb_Arab", "azj_Latn", "bak_Cyrl", "bam_Latn",
    "ban_Latn", "bel_Cyrl", "bem_Latn", "ben_Beng", "bho_Deva", "bjn_Arab", "bjn_Latn", "bod_Tibt",
    "bos_Latn", "bug_Latn", "bul_Cyrl", "cat_Latn", "ceb_Latn", "ces_Latn", "cjk_Latn", "ckb_Arab",
    "crh_Latn", "cym_Latn", "dan_Latn", "deu_Latn", "dik_Latn", "dyu_Latn", "dzo_Tibt", "ell_Grek",
    "eng_Latn", "epo_Latn", "est_Latn", "eus_Latn", "ewe_Latn", "fao_Latn", "fij_Latn", "fin_Latn",
    "fon_Latn", "fra_Latn", "fur_Latn", "fuv_Latn", "gaz_Latn", "gla_Latn", "gle_Latn", "glg_Latn",
    "grn_Latn", "guj_Gujr", "hat_Latn", "hau_Latn", "heb_Hebr", "hin_Deva", "hne_Deva", "hrv_Latn",
    "hun_Latn", "hye_Armn", "ibo_Latn", "ilo_Latn", "ind_Latn", "isl_Latn", "ita_Latn", "jav_Latn",
    "jpn_Jpan", "kab_Latn", "kac_Latn", "kam_Latn", "kan_Knda", "kas_Arab", "kas_Deva", "kat_Geor",
    "kaz_Cyrl", "kbp_Latn", "kea_Latn", "khk_Cyrl", "khm_Khmr", "kik_Latn", "kin_Latn", "kir_Cyrl",
    "kmb_Latn", "kmr_Latn", "knc_Arab", "knc_Latn", "kon_Latn", "kor_Hang", "lao_Laoo", "lij_Latn",
    "lim_Latn", "lin_Latn", "lit_Latn", "lmo_Latn", "ltg_Latn", "ltz_Latn", "lua_Latn", "lug_Latn",
    "luo_Latn", "lus_Latn", "lvs_Latn", "mag_Deva", "mai_Deva", "mal_Mlym", "mar_Deva", "min_Arab",
    "min_Latn", "mkd_Cyrl", "mlt_Latn", "mni_Beng", "mos_Latn", "mri_Latn", "mya_Mymr", "nld_Latn",
    "nno_Latn", "nob_Latn", "npi_Deva", "nso_Latn", "nus_Latn", "nya_Latn", "oci_Latn", "ory_Orya",
    "pag_Latn", "pan_Guru", "pap_Latn", "pbt_Arab", "pes_Arab", "plt_Latn", "pol_Latn", "por_Latn",
    "prs_Arab", "quy_Latn", "ron_Latn", "run_Latn", "rus_Cyrl", "sag_Latn", "san_Deva", "sat_Beng",
    "sat_Olck", "scn_Latn", "shn_Mymr", "sin_Sinh", "slk_Latn", "slv_Latn", "smo_Latn", "sna_Latn",
    "snd_Arab", "som_Latn", "sot_Latn", "spa_Latn", "srd_Latn", "srp_Cyrl", "ssw_Latn", "sun_Latn",
    "swe_Latn", "swh_Latn", "szl_Latn", "tam_Taml", "taq_Latn", "taq_Tfng", "tat_Cyrl", "tel_Telu",
    "tgk_Cyrl", "tgl_Latn", "tha_Thai", "tir_Ethi", "tpi_Latn", "tsn_Latn", "tso_Latn", "tuk_Latn",
    "tum_Latn", "tur_Latn", "twi_Latn", "tzm_Tfng", "uig_Arab", "ukr_Cyrl", "umb_Latn", "urd_Arab",
    "uzn_Latn", "vec_Latn", "vie_Latn", "war_Latn", "wol_Latn", "xho_Latn", "ydd_Hebr", "yor_Latn",
    "yue_Hant", "zho_Hans", "zho_Hant", "zsm_Latn", "zul_Latn",
})

MEXMA_LANGUAGES: frozenset[str] = frozenset({
    "acm_Arab", "aeb_Arab", "afr_Latn", "amh_Ethi", "ary_Arab", "arz_Arab", "asm_Beng", "azb_Arab",
    "azj_Latn", "bel_Cyrl", "ben_Beng", "bos_Latn", "bul_Cyrl", "cat_Latn", "ces_Latn", "ckb_Arab",
    "cym_Latn", "dan_Latn", "deu_Latn", "ell_Grek", "eng_Latn", "epo_Latn", "est_Latn", "eus_Latn",
    "fin_Latn", "fra_Latn", "gla_Latn", "gle_Latn", "glg_Latn", "guj_Gujr", "hau_Latn", "heb_Hebr",
    "hin_Deva", "hrv_Latn", "hun_Latn", "hye_Armn", "ind_Latn", "isl_Latn", "ita_Latn", "jav_Latn",
    "jpn_Jpan", "kan_Knda", "kat_Geor", "kaz_Cyrl", "khm_Khmr", "kir_Cyrl", "kor_Hang", "lao_Laoo",
    "mal_Mlym", "mar_Deva", "mkd_Cyrl", "mya_Mymr", "nld_Latn", "nno_Latn", "nob_Latn", "npi_Deva",
    "pol_Latn", "por_Latn", "ron_Latn", "rus_Cyrl", "san_Deva", "sin_Sinh", "slk_Latn", "slv_Latn",
    "snd_Arab", "som_Latn", "spa_Latn", "srp_Cyrl", "sun_Latn", "swe_Latn", "swh_Latn", "tam_Taml",
    "tel_Telu", "tha_Thai", "tur_Latn", "uig_Arab", "ukr_Cyrl", "urd_Arab", "vie_Latn", "xho_Latn",
    "zho_Hant",
})

_BY_LOWER = {c.lower(): c for c in FLORES200}


def suggest(code: str, n: int = 3) -> list[str]:
    """Known codes close to ``code`` (case slips, a missing script, typos), best first."""
    if not isinstance(code, str):
        return []
    low = code.strip().lower()
    if low in _BY_LOWER:
        return [_BY_LOWER[low]]
    prefix = sorted(c for c in FLORES200 if c.lower().startswith(low.split("_")[0] + "_"))
    if prefix:  # "deu" or "deu_Cyrl": same language, other or missing script
        return prefix[:n]
    return difflib.get_close_matches(code, sorted(FLORES200), n=n, cutoff=0.6)


def check_language(code: str, path: str | Path, line: int | None,
                   allow_unknown: bool = False) -> str:
    """Return ``code`` if it is a FLORES-200 code, else raise :class:`DataError` at ``path:line``.

    Args:
        code: the language code read from the data.
        path: the file the code was read from (for the message).
        line: its 1-based line, or None for a code taken from a file name.
        allow_unknown: accept any non-empty code (for languages outside FLORES-200).
    """
    if not isinstance(code, str) or not code or code != code.strip():
        raise DataError(path, line, f"invalid language code {code!r}",
                        "a FLORES-200 code such as 'deu_Latn'")
    if code in FLORES200 or allow_unknown:
        return code
    close = suggest(code)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise DataError(path, line, f"unknown language code {code!r}{hint}",
                    "a FLORES-200 code such as 'deu_Latn', or allow_unknown_languages")
