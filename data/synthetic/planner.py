"""Random placement of the world's features (:func:`plan_layout`), in world units.

Sizes are chosen for the default sampling (1 wu = 1 px at 224 px width, nadir, nominal altitude; flights fly
at 0.72-0.95 x that altitude): driving lanes 13-24 wu wide (+ 8 wu parking strips), cars about 6.5 x 13 wu,
persons about 4 x 5.6 wu (so at least ~3 x 3 px even at the far edge of a tilted view), buildings 14-60 wu.
Every world gets a road through the camera track, water, at least one clutter (ignore) patch, buildings,
trees, parked and moving vehicles and some persons near the track, so that each class is seen in every video.
"""

from __future__ import annotations

import numpy as np

from data.synthetic.layout import (
    BUILT,
    CLUTTER,
    FREE,
    ROAD,
    TREE,
    WALK,
    WATER,
    Building,
    Crown,
    Layout,
    Mover,
    Occupancy,
    Road,
    Thing,
    curve,
    hull,
    rect,
)


def _unit(a: float) -> np.ndarray:
    return np.array([np.cos(a), np.sin(a)])


def _car(rng: np.random.Generator, centre: np.ndarray, angle: float, truck_p: float = 0.08) -> Thing:
    if rng.random() < truck_p:
        size = (rng.uniform(18, 26), rng.uniform(7.0, 8.0))
        return Thing("truck", centre, angle, size, int(rng.integers(2**31)))
    return Thing(
        "car", centre, angle, (rng.uniform(11.5, 14.0), rng.uniform(6.0, 7.0)), int(rng.integers(2**31))
    )


def _person(rng: np.random.Generator, centre: np.ndarray, angle: float) -> Thing:
    return Thing(
        "person", centre, angle, (rng.uniform(3.8, 4.4), rng.uniform(5.2, 6.0)), int(rng.integers(2**31))
    )


def plan_layout(
    rng: np.random.Generator,
    size: tuple[int, int],
    track: np.ndarray,
    forward: np.ndarray,
    tilt: float,
    n_frames: int,
) -> Layout:
    """Lay out a world of ``size`` = (W, H) wu seen by a flight whose image centres follow ``track`` [T, 2]."""
    w, h = size
    diag = float(np.hypot(w, h))
    urban = float(rng.uniform(0.0, 1.0))
    sun_angle = rng.uniform(0, 2 * np.pi)
    lean = forward * min(1.3, rng.uniform(0.6, 0.8) + 0.8 * np.tan(tilt))
    n_fields = max(6, int(w * h / 12000))
    lay = Layout(
        size=size, urban=urban, sun=_unit(sun_angle), shadow_len=float(rng.uniform(0.3, 0.9)), lean=lean,
        field_seeds=rng.uniform([0, 0], [w, h], (n_fields, 2)), field_kinds=rng.integers(0, 6, n_fields),
    )  # fmt: skip
    occ = Occupancy(size)

    def near_track(spread: float) -> np.ndarray:
        return track[rng.integers(len(track))] + rng.normal(0.0, spread, 2)

    # --- water: a river or a pond (or both), near the track so the flight sees it ---
    kind = rng.random()
    if kind < 0.6:
        through = near_track(0) + _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(30, 110)
        width = rng.uniform(26, 55)
        pts = curve(rng, through, rng.uniform(0, np.pi), diag + 100, rng.uniform(10, 50))
        lay.rivers.append((pts, width))
        occ.line(pts, width + 8, WATER)
    if kind >= 0.45:
        centre = near_track(0) + _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(30, 100)
        th = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        a, b, rot = rng.uniform(18, 45), rng.uniform(14, 35), rng.uniform(0, np.pi)
        wob = 1 + 0.12 * np.sin(3 * th + rng.uniform(0, 6)) + 0.08 * np.sin(5 * th + rng.uniform(0, 6))
        local = np.stack([a * np.cos(th) * wob, b * np.sin(th) * wob], 1)
        poly = centre + local @ np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])
        lay.ponds.append(poly)
        occ.fill(poly, WATER)

    # --- roads: one through the track, one or more crossing it, a parallel one in towns ---
    main_angle = rng.uniform(0, np.pi)
    specs = [(near_track(10), main_angle, rng.uniform(16, 24))]
    for _ in range(1 + int(urban > 0.4) + int(urban > 0.75)):
        specs.append((near_track(70), main_angle + np.pi / 2 + rng.normal(0, 0.3), rng.uniform(13, 17)))
    if urban > 0.6:
        normal = _unit(main_angle + np.pi / 2) * rng.choice([-1, 1]) * rng.uniform(110, 170)
        specs.append((specs[0][0] + normal, main_angle + rng.normal(0, 0.08), rng.uniform(12, 18)))
    yellow = bool(rng.random() < 0.3)
    for through, angle, width in specs:
        sidewalk = rng.uniform(3, 5) if rng.random() < 0.25 + 0.75 * urban else 0.0
        parking = 8.0 if width >= 15 and rng.random() < 0.15 + 0.35 * urban else 0.0
        pts = curve(rng, through, angle, diag + 120, rng.uniform(0, 35))
        road = Road(pts, width + 2 * parking, sidewalk, parking, yellow, rng.random() < 0.6)
        width = road.width
        lay.roads.append(road)
        if sidewalk:
            occ.line(road.pts, width + 2 * sidewalk, WALK)
    for road in lay.roads:  # carriageways last, so that a sidewalk never cuts a crossing road
        occ.line(road.pts, road.width, ROAD)

    # --- clutter (ignore): construction sites; parking lots beside roads in towns ---
    for attempt in range(40):
        if sum(k == "construction" for _, k in lay.clutter) >= 1 + int(rng.random() < 0.4):
            break
        c = near_track(60 if attempt < 20 else 150)
        th = np.sort(rng.uniform(0, 2 * np.pi, 6))
        poly = c + np.stack([np.cos(th), np.sin(th)], 1) * rng.uniform(14, 32, (6, 1))
        if occ.is_free(poly):
            lay.clutter.append((poly, "construction"))
            occ.fill(poly, CLUTTER)
    for _ in range(int(urban > 0.3) + int(urban > 0.7)):
        road = lay.roads[rng.integers(len(lay.roads))]
        for _attempt in range(15):
            p, t = road.at(rng.uniform(0, road.length))
            side = rng.choice([-1, 1])
            n = np.array([-t[1], t[0]]) * side
            length, depth = rng.uniform(40, 70), rng.uniform(22, 28)
            centre = p + n * (road.width / 2 + road.sidewalk + depth / 2 + 1)
            ang = float(np.arctan2(t[1], t[0]))
            poly = rect(centre, ang, length, depth)
            if not occ.is_free(poly):
                continue
            lay.clutter.append((poly, "parking"))
            occ.fill(poly, CLUTTER)
            for k in range(int(length // 8)):
                if rng.random() < 0.7:
                    along = -length / 2 + 4 + 8 * k
                    spot = centre + t * along - n * (depth / 2 - 8)
                    lay.things.append(
                        _car(rng, spot, ang + np.pi / 2 * side + rng.normal(0, 0.04), truck_p=0)
                    )
            break

    # --- buildings in rows along roads (dense in towns), and scattered farm houses ---
    def try_building(centre: np.ndarray, angle: float, length: float, depth: float, height: float) -> bool:
        rects = [rect(centre, angle, length, depth)]
        if rng.random() < 0.25:  # L shape: a wing at one end
            d, n = _unit(angle), _unit(angle + np.pi / 2)
            wl, wd = length * rng.uniform(0.3, 0.45), depth * rng.uniform(0.6, 1.0)
            sgn = rng.choice([-1, 1])
            rects.append(
                rect(centre + d * sgn * (length - wl) / 2 + n * (depth / 2 + wd / 2 - 1), angle, wl, wd)
            )
        region = hull(*rects, *[r + lay.lean * height for r in rects])
        grown = region + np.sign(region - region.mean(0)) * 2.0  # keep 2 wu between buildings
        if not occ.is_free(grown):
            return False
        roof = "flat" if rng.random() < 0.2 + 0.5 * urban else "gable"
        lay.buildings.append(Building(rects, height, angle, roof, int(rng.integers(8)), int(rng.integers(5))))
        occ.fill(region, BUILT)
        return True

    p_build = 0.55 + 0.4 * urban
    for road in lay.roads:
        for side in (-1, 1):
            for row in range(1 + int(urban > 0.5)):
                s = rng.uniform(0, 20)
                setback = road.width / 2 + road.sidewalk + rng.uniform(2, 8) + row * rng.uniform(38, 50)
                while s < road.length:
                    length = rng.uniform(16, 40 + 20 * urban)
                    p, t = road.at(s + length / 2)
                    s += length + rng.uniform(3, 14)
                    if rng.random() > p_build or not (-20 < p[0] < w + 20 and -20 < p[1] < h + 20):
                        continue
                    depth = rng.uniform(14, 32)
                    n = np.array([-t[1], t[0]]) * side
                    height = rng.uniform(6, 14) if rng.random() > urban else rng.uniform(9, 26)
                    lean_in = max(0.0, -float(np.dot(lay.lean, n))) * height  # roof leaning towards the road
                    try_building(
                        p + n * (setback + lean_in + depth / 2),
                        float(np.arctan2(t[1], t[0])),
                        length,
                        depth,
                        height,
                    )
    for _ in range(int(rng.integers(2, 5) + round(3 * urban))):  # hamlets and town blocks near the track
        c, angle = near_track(70), main_angle if rng.random() < 0.6 else rng.uniform(0, np.pi)
        for _k in range(int(rng.integers(4, 12))):
            big = rng.random() < urban
            dims = (rng.uniform(16, 50 if big else 30), rng.uniform(12, 30 if big else 20))
            height, turn = (rng.uniform(9, 26) if big else rng.uniform(6, 13)), rng.choice([0, np.pi / 2])
            for _try in range(4):  # a few spots, since free ground between roads and water is scarce in towns
                if try_building(c + rng.normal(0, 30, 2), angle + turn + rng.normal(0, 0.05), *dims, height):
                    break

    # --- trees: rows along roads, clusters and woods, single trees ---
    palette_n = 5

    def add_crown(c: np.ndarray, radius: float, color: int) -> None:
        if occ.code_at(c) not in (FREE, TREE) or occ.code_at(c + lay.lean * 6) in (BUILT, WATER):
            return
        lobes = np.column_stack([rng.normal(0, 0.3 * radius, (4, 2)), radius * rng.uniform(0.45, 0.75, 4)])
        lay.crowns.append(Crown(c, radius, lobes, color))
        occ.disc(c, radius * 0.6, TREE)

    for road in lay.roads:
        for side in (-1, 1):
            if rng.random() < 0.35:
                step, col = rng.uniform(9, 14), int(rng.integers(palette_n))
                off = road.width / 2 + road.sidewalk + rng.uniform(2, 5)
                for s in np.arange(rng.uniform(0, step), road.length, step):
                    p, t = road.at(s)
                    add_crown(p + np.array([-t[1], t[0]]) * side * off, rng.uniform(3.5, 6), col)
    for _ in range(int(5 + round(5 * (1 - urban)))):  # groves and woods: crowns packed into a canopy
        c, n_crowns, col = near_track(90), int(rng.integers(6, 45)), int(rng.integers(palette_n))
        r_mean = rng.uniform(5, 9)
        spread = 0.45 * r_mean * np.sqrt(n_crowns)
        for _k in range(n_crowns):
            add_crown(c + rng.normal(0, spread, 2), r_mean * rng.uniform(0.7, 1.3), col)
    for _ in range(int(rng.integers(4, 16))):
        add_crown(rng.uniform([0, 0], [w, h]), rng.uniform(3.5, 8), int(rng.integers(palette_n)))

    # --- parked cars in the parking strips along curbs, away from crossings ---
    def clear_of_crossings(c: np.ndarray, own: Road) -> bool:
        return all(
            r is own or np.min(np.linalg.norm(r.pts - c, axis=1)) > r.width / 2 + r.sidewalk + 8
            for r in lay.roads
        )

    for road in lay.roads:
        if not road.parking:
            continue
        for side in (-1, 1):
            if rng.random() > 0.85:
                continue
            s = rng.uniform(0, 30)
            while s < road.length:
                car = _car(rng, np.zeros(2), 0.0, truck_p=0.03)
                p, t = road.at(s)
                s += car.size[0] + rng.uniform(1.5, 30)
                if rng.random() < 0.5:
                    continue
                car.centre = p + np.array([-t[1], t[0]]) * side * (road.width / 2 - car.size[1] / 2 - 0.4)
                car.angle = float(np.arctan2(t[1], t[0])) + (np.pi if rng.random() < 0.5 else 0.0)
                if clear_of_crossings(car.centre, road):
                    lay.things.append(car)

    # --- moving vehicles: a few per lane, one per lane of the main road passes the track ---
    for i, road in enumerate(lay.roads):
        for lane in (-1, 1):
            speed = lane * rng.uniform(0.8, 3.5)
            n_cars = int(min(4, rng.poisson(road.length / 200))) + int(i == 0)
            s_list: list[float] = []
            for k in range(n_cars):
                if k == 0 and i == 0:
                    target = track[rng.integers(len(track))]
                    s_star = float(
                        road.arc[np.argmin(np.linalg.norm(road.pts - target, axis=1))]
                    ) + rng.uniform(-30, 30)
                    s0 = s_star - speed * rng.uniform(0, n_frames)
                else:
                    s0 = rng.uniform(0, road.length)
                car = _car(rng, np.zeros(2), 0.0, truck_p=0.1)
                if all(abs(s0 - o) > 2.2 * car.size[0] for o in s_list):
                    s_list.append(s0)
                    lay.movers.append(Mover(car, i, lane * road.lanes_width / 4, s0, speed))

    # --- persons: groups and singles (static), and walkers, on free ground, sidewalks or clutter ---
    walkable = (FREE, WALK, CLUTTER)
    spots: list[np.ndarray] = []

    def add_person(c: np.ndarray, moving: bool) -> None:
        if occ.code_at(c) not in walkable or any(np.linalg.norm(c - q) < 5.5 for q in spots):
            return
        person = _person(rng, c, rng.uniform(0, 2 * np.pi))
        if moving:
            speed = rng.uniform(0.15, 0.45)
            for _try in range(6):  # a heading that keeps the walker on walkable ground (not into a river)
                end = c + speed * n_frames * _unit(person.angle)
                if all(occ.code_at(c + f * (end - c)) in walkable for f in (0.25, 0.5, 0.75, 1.0)):
                    break
                person.angle = rng.uniform(0, 2 * np.pi)
            else:
                return
            lay.movers.append(Mover(person, -1, 0.0, 0.0, speed, person.angle, 0.0))
        else:
            lay.things.append(person)
        spots.append(c)

    for _ in range(int(rng.integers(5, 9)) + int(urban > 0.5)):
        c = near_track(50)
        for _k in range(int(rng.integers(4, 13))):
            add_person(c + rng.normal(0, 6, 2), moving=False)
    for _ in range(int(rng.integers(3, 9))):
        add_person(near_track(60), moving=False)
    for _ in range(int(rng.integers(4, 10)) + int(4 * urban)):
        add_person(near_track(50), moving=True)
    return lay
