"""The texts a fast encoder must encode exactly like the tokenizer's own encoder before it is used.

Many scripts, code, whitespace runs of every kind, digits of several systems, emoji sequences, combining marks,
letters from recent Unicode versions (where two regex engines' tables may disagree), contractions in odd cases,
control characters, and every added-token string inside text, whole and broken. Deterministic, and small
enough that encoding it both ways takes well under a second.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence

__all__ = ["verification_texts"]

_PROSE = (
    "All human beings are born free and equal in dignity and rights. They are endowed with reason and conscience.",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison.",
    "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen begabt.",
    "Todos los seres humanos nacen libres e iguales en dignidad y derechos; ¿verdad? ¡Claro que sí!",
    "Todos os seres humanos nascem livres e iguais em dignidade e em direitos. São dotados de razão.",
    "Tutti gli esseri umani nascono liberi ed eguali in dignità e diritti. Essi sono dotati di ragione.",
    "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и совестью.",
    "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια και τα δικαιώματα.",
    "Wszyscy ludzie rodzą się wolni i równi pod względem swej godności i swych praw. Zażółć gęślą jaźń.",
    "Tüm insanlar hür, haysiyet ve haklar bakımından eşit doğarlar. İstanbul'da ılık bir gün; IĞDIR, ışık.",
    "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。",
    "人人生而自由，在尊嚴和權利上一律平等。「你好，世界！」——《臺灣》",
    "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。カタカナ、ｶﾀｶﾅ。",
    "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다. 한국어 텍스트입니다.",
    "جميع الناس يولدون أحرارًا متساوين في الكرامة والحقوق. وقد وهبوا عقلاً وضميرًا. بِسْمِ اللَّهِ الرَّحْمَنِ",
    "כל בני האדם נולדו בני חורין ושווים בערכם ובזכויותיהם. בְּרֵאשִׁית בָּרָא אֱלֹהִים",
    "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता और समानता प्राप्त है। क्षत्रिय",
    "সমস্ত মানুষ স্বাধীনভাবে সমান মর্যাদা এবং অধিকার নিয়ে জন্মগ্রহণ করে।",
    "மனிதப் பிறவியினர் சகலரும் சுதந்திரமாகவே பிறக்கின்றனர்.",
    "มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอภาคกันในเกียรติศักดิ์และสิทธิ ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Tất cả mọi người sinh ra đều được tự do và bình đẳng về nhân phẩm và quyền lợi. Tiếng Việt có dấu.",
    "Semua orang dilahirkan merdeka dan mempunyai martabat dan hak-hak yang sama.",
    "Kila mtu amezaliwa huru, hadhi na haki zake ni sawa.",
    "Ყველა ადამიანი იბადება თავისუფალი და თანასწორი თავისი ღირსებითა და უფლებებით.",
    "Մարդիկ բոլորը ծնվում են ազատ ու հավասար իրենց արժանապատվությամբ ու իրավունքներով։",
    "ሁሉም የሰው ልጆች ሲወለዱ ነጻና በክብርና በመብትም እኩልነት ያላቸው ናቸው።",
    "Бардык адамдар өз беделинде жана укуктарында эркин жана тең укуктуу болуп жаралат. Ўзбек, Қазақ, Ҳ.",
    "ᐃᓅᓯᖅ ᐊᑕᐅᓯᖅ ᓄᓇᖃᕐᓂᐊᖅᑐᖅ, ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ, ᚠᚢᚦᚨᚱᚲ, 𐌰𐌱𐌲𐌳, 𓀀𓀁𓀂, ꦗꦮ.",
    "Ærøskøbing, Þórshöfn, Œuvre, ﬁnance ﬂow, Straße, ẞ, ǅemal, ǈudevit, ʻokina, Dvořák, Łódź, Šiauliai.",
)

_CODE = (
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n'
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nprint(fib(10))  # 55\n",
    "class Stack:\n\tdef __init__(self):\n\t\tself._items = []\n\n\tdef push(self, x):\n\t\tself._items.append(x)\n",
    "const xs = [1, 2, 3].map((x) => x ** 2);\nif (xs.length !== 3) {\n  throw new Error(`bad ${xs}`);\n}\n",
    'fn main() {\n    let v: Vec<u32> = (0..10).filter(|x| x % 2 == 0).collect();\n    println!("{:?}", v);\n}\n',
    '#include <stdio.h>\nint main(void) {\n  for (int i = 0; i < 3; ++i) printf("%d\\n", i);\n  return 0;\n}\n',
    "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 100.5 GROUP BY u.id;",
    '{"name": "feedline", "version": "0.1.0", "tags": ["a", "b"], "nested": {"x": null, "y": [1e-5, -2]}}',
    "server:\n  port: 8080\n  workers: 4\n  tls:\n    enabled: true\n    cert: /etc/tls/cert.pem\n",
    '<div class="box">\n  <p>Hello &amp; welcome</p>\n  <img src="a.png" alt="" />\n</div>\n',
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l \"$f\" | awk '{print $1}'\ndone\n",
    "\\begin{equation}\n  \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}\n\\end{equation}\n",
    "--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n-import os\n+import sys\n     pass\n",
    "| col | value |\n|-----|------:|\n| a   |   1.5 |\n| b   |  -2.0 |\n\n> quote\n\n- [ ] todo\n- [x] done\n",
    "x=1;y=2;z=x+y*3//4**5%6;s='it''s';t=\"he said \\\"hi\\\"\";u=r'\\d+\\s*';v=f'{x!r:>10}'",
    "    \n        indented\n\t\tmixed\t \ttabs  \n\n\n   trailing   \n",
)

_EDGE = (
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "a",
    "A",
    "0",
    ".",
    "'",
    "'s",
    "a\n",
    "\na",
    "I'm sure YOU'RE right; it'S what we'LL do, he'd say. They'VE gone, I'M here, o'clock, rock'n'roll.",
    "Contractions with case folding: 'ſ 'ſt 'K 'ẞ 'Ｓ 'İ 'ı 's 'S 'T 'RE 'Ve 'mM 'Ll 'D ''s '''s 's's",
    "Curly ’s and ‘quotes’ and «guillemets» and „Anführung“ and 「括弧」 and ‹single›.",
    "Digits: 0 12 345 6789 1234567890 3.14159 -2.5e-10 1,000,000 1_000_000 0x1F600 0b1010 v1.2.3-rc4 2024-01-31",
    "Other digits: ٠١٢٣٤٥٦٧٨٩ ۰۱۲۳ ०१२३४ ০১২৩ ௧௨௩ ๑๒๓ １２３４ ²³¹⁴ ₀₁₂ ½ ¼ ¾ Ⅻ Ⅳ ⅻ 〇 𝟙𝟚𝟛 ①②③ ⑴ 🄁",
    "Emoji: 👍 👍🏽 👨‍👩‍👧‍👦 🧑🏿‍💻 🇺🇸🇯🇵🇩🇪 🏴󠁧󠁢󠁥󠁮󠁧󠁿 1️⃣ #️⃣ ❤️ ❤ ☺️ 🫨 🪿 😀😃😄 🙂‍↔️ 🇦 x🇿y",
    "Emoji glued to words:hello👋world, 😀😀😀!!! ...🎉🎉 (🚀) [✅] 💯%",
    "Math: ∑ᵢ xᵢ² ≤ ∫₀^∞ f(x) dx ≠ √2 ≈ 1.414 ∀ε>0 ∃δ: |x−y|<δ ⇒ ℝ ℕ ℤ ⊆ ⊂ ∈ ∉ ∅ ∞ ±×÷ ≥≤ ≪≫ ∂∇",
    "Symbols: © ® ™ § ¶ † ‡ • … ‰ ′ ″ ‹ › € £ ¥ ₹ ₿ ¢ ° № ℃ ℉ µ Ω Å ℮ ✓ ✗ ★ ☆ ♠ ♣ ♥ ♦ ♪ ♫ ☃ ⚡",
    "Box drawing: ┌──┬──┐\n│a │b │\n├──┼──┤\n└──┴──┘ ▀▄█▌▐░▒▓ ■□▪▫ ←↑→↓↔↕",
    "Controls: \x00 \x01\x02 \x07 \x08 \x1b[31mred\x1b[0m \x7f \x80 \x9f soft\xadhyphen zero\u200bwidth",
    "Bidi: \u200eLRM\u200f RLM \u202aLRE\u202c \u2066isolate\u2069 العربية English עברית 123",
    "Joiners: a\u200db a\u200cb \u2060word\u2060 \ufeffBOM inside \ufeff and private \ue000\uf8ff \U000f0000",
    "Variation selectors: ︎ ︎︎ 葛󠄀 葛 ☃︎ ☃️ 8️ a︀",
    "Recent Unicode: \U00011f04\U00011f05 \U0001e030\U0001e031 \U00031350\U00031351 \u2ffc \U0001fae8 "
    "\U0001fa75 \u1c89\u1c8a \U00010d4a \U0001e5d0 \U00016d40 ",
    "Astral CJK and scripts: 𠀀𠀁𠀂 𪚥 𩸽 𝄞𝄢 𝒜𝓑𝔠 𝐀𝐁 𐐷 𐑅 𞤀𞤁 𖹀 𑀅𑀆",
    "Fullwidth: ＡＢＣ ａｂｃ ！？ （ｘ） ｛ｙ｝ ～ Halfwidth: ｱｲｳ ﾞﾟ ￡￥",
    "URLs: https://example.com/a/b?c=1&d=%20e#frag mailto:a.b+c@d.org ftp://x.y/z.tar.gz www.ex-ample.co.uk",
    "Repeats: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ________________ ---------------- ================ "
    "................ !!!!!!!!!! ?????????? ********** ########## ~~~~~~~~~~ 0000000000000000 ",
    "Mixed scripts glued: abcабвαβγ漢字かなカナ한글عربيעבריतमिழ123xyz",
    "Unassigned and noncharacters: \u0378 \u0379 \U000e0080 \ufdd0 \ufffe \uffff \U0001fffe end",
)

# Text whose marks combine: in NFC form it exercises the fast path, as written it tests the hand-over to the
# tokenizer's own encoder (its normaliser changes the text).
_MARKS = (
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 An\u0303o Ångstro\u0308m",
    "q\u0307 x\u0304\u0301 a\u0323\u0302 o\u031b\u0323 \u1e9b\u0323 e\u0328\u0301 s\u0323\u0307",
    "Z\u0337\u0322\u031ba\u0334\u0315l\u0338\u0327g\u0335\u0301o\u0336\u0300 t\u0358e\u0360x\u035ft",
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af \u110b\u1165 (conjoining jamo)",
    "\u0915\u094d\u0937 \u0928\u093c \u09a1\u09bc \u0b47\u0b3e \u0dd9\u0dcf \u0f40\u0f71\u0f72",
    "\u05d1\u05bc\u05b0 \u05e9\u05c1\u05b4 \u0628\u0651\u064e \u0644\u0650\u0651 \u0627\u0653 \u0627\u0654",
    "A\u030a\u0301 \u212b \u2126 \u1e0b\u0323 \u1e0d\u0307 \u00c5\u0301 \u0041\u0300\u0316",
    "\u0300 leading mark, mark after space \u0301, after digit 1\u0301, after emoji \U0001f600\u0301",
)

_WHITESPACE = (
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x85",
    "\xa0",
    "\u1680",
    "\u2000",
    "\u2003",
    "\u2009",
    "\u200a",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
    "\u180e",
    "\u200b",
    "\ufeff",
)


def _whitespace_runs() -> list[str]:
    texts = []
    for ws in _WHITESPACE:
        for n in (1, 2, 3, 4, 7, 16):
            run = ws * n
            texts.append(f"{run}word{run}next{run}1{run}.{run}")
            texts.append(f"line{run}\nline\n{run}end{run}")
    texts.append("mixed \t \n \r\n\u3000 \xa0\u2003 \n\n\t\t  x  \n \n  \t\n")
    texts.append("".join(_WHITESPACE) + "a" + "".join(reversed(_WHITESPACE)))
    texts.append("  " + "    ".join(["def", "x", "=", "1"]) + "\n" * 5 + " " * 9 + "\n\n")
    return texts


def _added_token_texts(tokens: Sequence[str], per_text: int = 16) -> list[str]:
    """Every added token whole in many positions, and broken so that only part of it is present."""
    if not tokens:
        return []
    texts = [
        "".join(tokens),
        " ".join(tokens),
        "\n".join(tokens),
        "x".join(tokens) + "x",
        "".join(f"{t}{t[:-1]}{t[1:]} " for t in tokens),
    ]
    contexts = [
        f"user text {t} inside, {t}at the start of a word, end{t}\n{t}\n\n{t}  {t}{t}"
        f" {t[: len(t) // 2]} {t[len(t) // 2 :]} <{t}> '{t}s {t}'s 1{t}2 \u00e9{t}\u00e9 \U0001f600{t}\t{t} "
        for t in tokens
    ]
    texts += ["".join(contexts[i : i + per_text]) for i in range(0, len(contexts), per_text)]
    return texts


def _random_mixes(tokens: Sequence[str], count: int = 120) -> list[str]:
    """Seeded collage of the pieces above: boundaries between scripts, marks, spaces and added tokens."""
    rng = random.Random(20240611)
    pool = [*_PROSE, *_EDGE, *(unicodedata.normalize("NFC", m) for m in _MARKS)]
    glue = [*_WHITESPACE, "", "", "", "'", "''", "\n\n", "  \n", "12", "😀", "\u0301", *tokens]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(2, 6)):
            source = rng.choice(pool)
            start = rng.randrange(len(source) + 1)
            parts.append(source[start : start + rng.randint(1, 40)])
            parts.append(rng.choice(glue) * rng.choice((1, 1, 1, 2, 3)))
        texts.append("".join(parts))
    return texts


def verification_texts(added_tokens: Sequence[str]) -> list[str]:
    """The corpus for a tokenizer whose added tokens (matched in text) are ``added_tokens``."""
    tokens = sorted(added_tokens)
    marks = [*_MARKS, *(unicodedata.normalize("NFC", m) for m in _MARKS)]
    return [*_PROSE, *_CODE, *_EDGE, *marks, *_whitespace_runs(), *_added_token_texts(tokens), *_random_mixes(tokens)]
