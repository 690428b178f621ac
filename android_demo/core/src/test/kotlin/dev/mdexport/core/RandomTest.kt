package dev.mdexport.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Test

class RandomTest {
    @Test fun matchesThePythonReference() {
        for (c in TestSupport.golden("rng").objects("cases")) {
            val seed = c.long("seed")
            val first = java.lang.Long.toUnsignedString(SeededGaussian(seed).nextLong())
            assertEquals("first word, seed $seed", (c.array("u64_first")[0] as String), first)
            val g = SeededGaussian(seed)
            c.doubleList("gaussians").forEachIndexed { i, expected ->
                assertEquals("seed $seed sample $i", expected, g.nextGaussian().toFloat().toDouble(), 1e-6)
            }
        }
    }

    @Test fun statisticsLookNormal() {
        val g = SeededGaussian(7)
        val n = 200_000
        var sum = 0.0
        var sq = 0.0
        repeat(n) { val x = g.nextGaussian(); sum += x; sq += x * x }
        val mean = sum / n
        assertEquals(0.0, mean, 0.01)
        assertEquals(1.0, sq / n - mean * mean, 0.01)
    }

    @Test fun seedsDiffer() {
        assertNotEquals(SeededGaussian(1).nextGaussian(), SeededGaussian(2).nextGaussian())
        assertEquals(SeededGaussian(3).nextGaussian(), SeededGaussian(3).nextGaussian(), 0.0)
    }
}
