//! Class names of the real datasets, in label order.

/// CIFAR-10 `label_names`.
pub const CIFAR10: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 `fine_label_names`.
pub const CIFAR100_FINE: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// CIFAR-100 `coarse_label_names`.
pub const CIFAR100_COARSE: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// The fine classes of each CIFAR-100 superclass, as the dataset's page lists them.
const CIFAR100_GROUPS: [[&str; 5]; 20] = [
    ["beaver", "dolphin", "otter", "seal", "whale"],
    ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    ["orchid", "poppy", "rose", "sunflower", "tulip"],
    ["bottle", "bowl", "can", "cup", "plate"],
    ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    ["clock", "keyboard", "lamp", "telephone", "television"],
    ["bed", "chair", "couch", "table", "wardrobe"],
    ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    ["bear", "leopard", "lion", "tiger", "wolf"],
    ["bridge", "castle", "house", "road", "skyscraper"],
    ["cloud", "forest", "mountain", "plain", "sea"],
    ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    ["fox", "porcupine", "possum", "raccoon", "skunk"],
    ["crab", "lobster", "snail", "spider", "worm"],
    ["baby", "boy", "girl", "man", "woman"],
    ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    [
        "maple_tree",
        "oak_tree",
        "palm_tree",
        "pine_tree",
        "willow_tree",
    ],
    ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
];

/// The coarse label of a CIFAR-100 fine label.
pub fn cifar100_coarse(fine: usize) -> usize {
    let name = CIFAR100_FINE[fine];
    CIFAR100_GROUPS
        .iter()
        .position(|group| group.contains(&name))
        .expect("every fine class has a superclass")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fine_class_is_in_exactly_one_superclass() {
        let mut seen: Vec<&str> = CIFAR100_GROUPS.iter().flatten().copied().collect();
        seen.sort_unstable();
        let mut fine = CIFAR100_FINE.to_vec();
        fine.sort_unstable();
        assert_eq!(seen, fine);
        assert_eq!(cifar100_coarse(0), 4, "apple is fruit_and_vegetables");
        assert_eq!(cifar100_coarse(99), 13, "worm is a non-insect invertebrate");
    }
}
