"""The demo crawl's made-up pages beside the documentation: other languages, junk (navigation
boilerplate, lorem ipsum, keyword spam, stubs) and near-copies with a share of the words replaced.
Drawn from a seeded random.Random, so the same seed gives the same pages."""

from __future__ import annotations

import random
import re

FOREIGN = {
    "de": [
        "Die Stadt liegt an einem breiten Fluss und hat eine lange Geschichte.",
        "Im Sommer kommen viele Besucher, um die alten Brücken zu sehen.",
        "Der Markt öffnet jeden Morgen um sieben Uhr und schließt am frühen Nachmittag.",
        "Wir haben gestern Abend in einem kleinen Restaurant am Hafen gegessen.",
        "Das Wetter war kalt, aber die Sonne schien den ganzen Tag.",
        "Meine Schwester arbeitet seit drei Jahren als Ärztin im Krankenhaus.",
        "Die Kinder spielen nach der Schule gern im Park hinter dem Rathaus.",
        "Am Wochenende fahren wir mit dem Zug in die Berge.",
    ],
    "fr": [
        "La ville se trouve au bord d'une grande rivière et possède une longue histoire.",
        "En été, de nombreux visiteurs viennent admirer les vieux ponts.",
        "Le marché ouvre chaque matin à sept heures et ferme en début d'après-midi.",
        "Nous avons dîné hier soir dans un petit restaurant près du port.",
        "Il faisait froid, mais le soleil a brillé toute la journée.",
        "Ma sœur travaille comme médecin à l'hôpital depuis trois ans.",
        "Les enfants aiment jouer dans le parc derrière la mairie après l'école.",
        "Le week-end, nous prenons le train pour aller à la montagne.",
    ],
    "es": [
        "La ciudad está junto a un río ancho y tiene una larga historia.",
        "En verano llegan muchos visitantes para ver los puentes antiguos.",
        "El mercado abre cada mañana a las siete y cierra a primera hora de la tarde.",
        "Anoche cenamos en un pequeño restaurante cerca del puerto.",
        "Hacía frío, pero el sol brilló durante todo el día.",
        "Mi hermana trabaja como médica en el hospital desde hace tres años.",
        "A los niños les gusta jugar en el parque detrás del ayuntamiento.",
        "Los fines de semana tomamos el tren para ir a las montañas.",
    ],
    "it": [
        "La città si trova lungo un ampio fiume e ha una lunga storia.",
        "In estate arrivano molti visitatori per vedere i vecchi ponti.",
        "Il mercato apre ogni mattina alle sette e chiude nel primo pomeriggio.",
        "Ieri sera abbiamo cenato in un piccolo ristorante vicino al porto.",
        "Faceva freddo, ma il sole ha brillato per tutto il giorno.",
        "Mia sorella lavora come medico in ospedale da tre anni.",
        "Ai bambini piace giocare nel parco dietro il municipio dopo la scuola.",
        "Nel fine settimana prendiamo il treno per andare in montagna.",
    ],
    "nl": [
        "De stad ligt aan een brede rivier en heeft een lange geschiedenis.",
        "In de zomer komen veel bezoekers om de oude bruggen te bekijken.",
        "De markt gaat elke ochtend om zeven uur open en sluit vroeg in de middag.",
        "Gisteravond hebben we gegeten in een klein restaurant bij de haven.",
        "Het was koud, maar de zon scheen de hele dag.",
        "Mijn zus werkt al drie jaar als arts in het ziekenhuis.",
        "De kinderen spelen na school graag in het park achter het stadhuis.",
        "In het weekend nemen we de trein naar de bergen.",
    ],
    "pt": [
        "A cidade fica junto a um rio largo e tem uma longa história.",
        "No verão chegam muitos visitantes para ver as pontes antigas.",
        "O mercado abre todas as manhãs às sete horas e fecha no início da tarde.",
        "Ontem à noite jantámos num pequeno restaurante perto do porto.",
        "Estava frio, mas o sol brilhou durante todo o dia.",
        "A minha irmã trabalha como médica no hospital há três anos.",
        "As crianças gostam de brincar no parque atrás da câmara municipal depois da escola.",
        "Ao fim de semana apanhamos o comboio para ir às montanhas.",
    ],
}

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat."
)
NAV = ["Home", "About us", "Products", "Pricing", "Blog", "Careers", "Contact", "Login", "Sign up", "Cart"]


def _page(title: str, body: str) -> str:
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>"


def edit_html(html: str, rate: float, rng: random.Random) -> str:
    """Replace a share of the words in the page's text (never inside tags): a near-copy."""

    def edit(match):
        words = match.group(1).split(" ")
        for i, w in enumerate(words):
            if w.isalpha() and rng.random() < rate:
                words[i] = rng.choice(("really", "quite", "often", "rather", "simply", "usually"))
        return ">" + " ".join(words) + "<"

    return re.sub(r">([^<]+)<", edit, html)


def edit_text(text: str, rate: float, rng: random.Random) -> str:
    words = text.split(" ")
    return " ".join(rng.choice(("really", "quite", "often")) if rng.random() < rate else w for w in words)


def junk_pages(rng: random.Random) -> list[tuple[str, str]]:
    pages = []
    for i in range(10):
        nav = " | ".join(rng.sample(NAV, len(NAV)))
        body = (
            "".join(f"<div class='nav'>{nav}</div>" for _ in range(8))
            + "<footer>© 2024 Example Inc.</footer>"
        )
        pages.append((f"shop/{i}", _page(f"Shop {i}", body)))
    for i in range(5):
        pages.append((f"lorem/{i}", _page("Lorem", "".join(f"<p>{LOREM}</p>" for _ in range(6)))))
    for i in range(5):
        spam = " ".join(
            rng.choice(["cheap", "best", "buy", "python", "tutorial", "free", "download"]) for _ in range(400)
        )
        pages.append((f"spam/{i}", _page("Best cheap python", f"<p>{spam}</p>")))
    for i in range(5):
        pages.append((f"short/{i}", _page("Note", "<p>Page moved. See the new site.</p>")))
    return pages


def foreign_pages(rng: random.Random) -> list[tuple[str, str]]:
    pages = []
    for lang, sentences in FOREIGN.items():
        for i in range(4):
            paragraphs = ["<p>" + " ".join(rng.choices(sentences, k=6)) + "</p>" for _ in range(5)]
            pages.append((f"{lang}/{i}", _page(f"{lang} {i}", "".join(paragraphs))))
    return pages
